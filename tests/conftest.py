import os
import subprocess
import sys

import pytest


def _share_the_cores():
    """Under pytest-xdist (`make test` runs two workers) each worker's torch gets its share of the cores, in this
    process and in the CLI processes it starts: two workers each with a thread per core oversubscribe the CPU, and
    OpenMP threads waiting on each other then lose most of their time."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
LLAMA2_TOKENIZER = os.path.join(SHARED, "tokenizers", "llama2")
STORIES = os.path.join(SHARED, "models", "stories260K-hf")
EN_DATA = os.path.join(SHARED, "alpaca_gpt4_en", "alpaca_en_train.json")
ZH_DATA = os.path.join(SHARED, "alpaca_gpt4_zh", "alpaca_zh_train.json")
SAMPLE = os.path.join(ROOT, "src", "llm_tuning", "data", "samples", "zh_sample.json")


@pytest.fixture(scope="session", autouse=True)
def _private_tokenisation_cache(tmp_path_factory):
    """Tests (and the CLI processes they start) use their own tokenisation cache, never the user's."""
    os.environ["LLM_TUNING_CACHE"] = str(tmp_path_factory.mktemp("tokenized-cache"))
    yield


def need_shared(path):
    """Skip on a user's clone without ../shared/data; under CI a missing file is a failure."""
    if not os.path.exists(path):
        msg = f"{path} is missing: these tests need ../shared/data beside the project"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run_cli(*args, cwd=None, timeout=600):
    """Run the real `llm-tuning` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "llm_tuning", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random Bloom and Llama (BPE tokenizer trained on the bundled sample), built once per session."""
    from llm_tuning.models import init_model

    out = {}
    for arch in ("bloom", "llama"):
        path = str(tmp_path_factory.mktemp(f"tiny-{arch}") / "model")
        init_model(arch, path, vocab_size=600, seed=0, init_std=0.1, log=lambda m: None)
        out[arch] = path
    return out


@pytest.fixture(scope="session")
def sample_records():
    from llm_tuning.data.formats import load_records

    return load_records(SAMPLE).records
