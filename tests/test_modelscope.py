"""`--model modelscope:ORG/NAME`: a model in ModelScope's local cache ($MODELSCOPE_CACHE) trains and generates
through the modelscope package; one missing from the cache is one line naming it and how to download it."""

import json
import shutil

import pytest

from conftest import SAMPLE, run_cli
from llm_tuning.errors import UserError
from llm_tuning.models.load import resolve_source


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_models):
    """A ModelScope cache holding the tiny Llama as org/tiny-llm, in the layout `modelscope download` writes:
    models/<org>/<name> (and models/<org>--<name>/snapshots/<revision> for modelscope >= 1.38)."""
    root = tmp_path / "modelscope-cache"
    shutil.copytree(tiny_models["llama"], root / "models" / "org" / "tiny-llm")
    shutil.copytree(tiny_models["bloom"], root / "models" / "org--tiny-bloom" / "snapshots" / "master")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(root))  # the CLI subprocesses inherit it
    return root


def test_modelscope_model_trains_and_generates(cache, tmp_path):
    out = tmp_path / "lora"
    r = run_cli("train", "--model", "modelscope:org/tiny-llm", "--data", SAMPLE, "--max-steps", "1",
                "--max-length", "64", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    with open(out / "llm_tuning.json") as f:
        assert json.load(f)["base_model"] == "modelscope:org/tiny-llm"  # generate/merge/serve resolve it again
    r = run_cli("generate", "--model", "modelscope:org/tiny-llm", "--adapter", str(out), "--prompt", "说出一种水果。",
                "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_both_cache_layouts_resolve(cache):
    assert resolve_source("modelscope:org/tiny-llm") == str(cache / "models" / "org" / "tiny-llm")
    assert resolve_source("modelscope:org/tiny-bloom") == str(cache / "models" / "org--tiny-bloom" / "snapshots" / "master")
    assert resolve_source("org/not-modelscope") == "org/not-modelscope"  # hub ids and folders pass through


def test_missing_modelscope_model_is_one_line(cache, tmp_path):
    out = tmp_path / "out"
    r = run_cli("train", "--model", "modelscope:modelscope/Llama-2-7b-ms", "--data", SAMPLE, "--output-dir", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "modelscope/Llama-2-7b-ms" in lines[0] and "modelscope download modelscope/Llama-2-7b-ms" in lines[0]
    assert str(cache) in lines[0] and not out.exists()


def test_malformed_modelscope_id():
    with pytest.raises(UserError, match="modelscope:ORG/NAME"):
        resolve_source("modelscope:Llama-2-7b-ms")


def test_estimate_reads_a_modelscope_model(cache, tiny_models):
    """estimate reads the config from the same cache folder as train does."""
    r = run_cli("estimate", "--model", "modelscope:org/tiny-llm", "--json")
    assert r.returncode == 0, r.stderr
    plain = run_cli("estimate", "--model", tiny_models["llama"], "--json")
    assert json.loads(r.stdout) == json.loads(plain.stdout)
