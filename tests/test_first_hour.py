"""What a newcomer meets in the first hour: loading errors that say what was looked for and what to do, a hub
name failing at once without a hub, advice spelled as the caller types it, a tour that can be run again, a
committed example's report never rewritten. Each through the real command (or the real Python API), fast."""

import os
import time

import pytest

from llm_tuning.methods import METHODS

from conftest import ROOT, SAMPLE, run_cli
from llm_tuning.errors import UserError

NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # a port nothing listens on: the hub is unreachable, at once


def _cli_env(env, *args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "llm_tuning", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, **env}, timeout=120)


def test_model_folder_without_tokenizer_names_what_was_looked_for_and_the_flag(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = run_cli("train", "--model", str(model), "--data", SAMPLE, "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{model}: no tokenizer in this folder (it has config.json: a model without its tokenizer); looked for " \
           "tokenizer.json, tokenizer.model" in r.stderr and "pass --tokenizer DIR" in r.stderr
    assert not (tmp_path / "out").exists()


def test_folder_without_config_json_says_so(tmp_path):
    folder = tmp_path / "tok-only"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    r = run_cli("train", "--model", str(folder), "--data", SAMPLE, "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr == (f"llm-tuning train: error: {folder}: no config.json in this folder, so "
                                              "it is not a model folder (save_pretrained and init-model write "
                                              "config.json beside the weights); give the folder that holds it\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, name, what", [("--data", "zh_sample", "file or folder"),
                                              ("--model", "someone/no-such-model", "model folder")])
def test_hub_name_without_a_hub_fails_at_once(tmp_path, flag, name, what):
    """`--data zh_sample` (a typo for the .json file) spent 24 s in the hub libraries' retries offline."""
    args = {"--model": str(tmp_path), "--data": SAMPLE, "--output-dir": str(tmp_path / "out"), flag: name}
    if flag == "--data":
        (tmp_path / "config.json").write_text("{}")
    t = time.time()
    r = _cli_env(NO_HUB, "train", *[x for kv in args.items() for x in kv])
    elapsed = time.time() - t
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"error: {name}: no such {what} here, and as a hub name it cannot be fetched: the hub 127.0.0.1:9 is " \
           "unreachable" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
    assert elapsed < 15, elapsed  # start-up and the refused connection; no retries
    assert not (tmp_path / "out").exists()


def test_python_api_advice_names_the_keyword_not_the_flag(tmp_path):
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    model = tmp_path / "model"  # enough for the checks made before any loading
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(UserError) as e:
        train(TrainConfig(model=str(model), data=SAMPLE, output_dir=str(out)))
    assert str(e.value) == f"output_dir={str(out)!r}: not empty; pass resume=True to continue the run in it, or " \
                           "overwrite=True to replace it"
    r = run_cli("train", "--model", str(model), "--data", SAMPLE, "--output-dir", str(out))
    assert r.returncode == 2 and f"--output-dir {out}: not empty; pass --resume to continue the run in it, or " \
                                  "--overwrite to replace it" in r.stderr


def test_init_model_overwrite(tmp_path):
    out = tmp_path / "tiny"
    args = ("init-model", "--arch", "llama", "--output", str(out), "--vocab-size", "300", "--hidden-size", "16")
    assert run_cli(*args).returncode == 0
    r = run_cli(*args)
    assert r.returncode == 2 and r.stderr == (f"llm-tuning init-model: error: --output {out}: exists and is not "
                                              "empty; choose a new folder or pass --overwrite\n")
    (out / "stale.txt").write_text("from before")
    r = run_cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()


def test_compare_never_rewrites_a_committed_example(capsys):
    """Running a committed example's YAML as it is writes to runs/NAME; --output-dir names any folder, the
    example's own included (how the reference is regenerated)."""
    from llm_tuning.lab.compare import _output_dir

    example = os.path.join(ROOT, "examples", "stories260k_en")
    assert os.path.isfile(os.path.join(example, "compare.json"))
    said = []
    assert _output_dir(example, None, said.append) == os.path.join("runs", "stories260k_en")
    assert said == [f"compare: {example} is a committed reference report, left as it is; writing to "
                    f"runs/stories260k_en instead (--output-dir DIR to choose; --output-dir {example} --force to "
                    "regenerate the reference)"]
    assert _output_dir(example, example, said.append) == example
    assert _output_dir("runs/mine", None, said.append) == "runs/mine" and len(said) == 1


def test_qlora_is_pointed_to_lora_on_a_quantised_base(tmp_path):
    r = run_cli("train", "--model", "m", "--data", SAMPLE, "--output-dir", str(tmp_path / "out"), "--method", "qlora")
    assert r.returncode == 2 and r.stderr == (
        "llm-tuning train: error: --method 'qlora' is unknown; QLoRA is LoRA on a quantised base: --method lora "
        f"--quantization 4bit (or 8bit) (the choices: {', '.join(METHODS)})\n")


FP16_HINT = ("[llm-tuning] hint: --precision fp16 on a CPU halves the weights' memory but runs slower than fp32 (CPUs "
             "have no fast fp16 arithmetic; ~4x slower in training here); for speed use fp32, or bf16 on a CPU with "
             "bf16 instructions\n")


def test_quiet_fp16_hint_and_no_dataset_bars(tmp_path):
    """Without --quiet: no datasets 'Saving the dataset' bars (a fresh tokenisation is saved to the cache); with
    --quiet and --precision fp16 on a CPU: nothing on stdout, the fp16 hint once on stderr, and the run written."""
    import torch

    from llm_tuning.models import init_model

    if torch.cuda.is_available():
        pytest.skip("the fp16 hint is for CPU runs")
    model = str(tmp_path / "tiny")
    init_model("llama", model, vocab_size=300, hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=32,
               log=lambda m: None)
    common = ("train", "--model", model, "--data", SAMPLE, "--max-steps", "1", "--save-steps", "1")
    r = run_cli(*common, "--output-dir", str(tmp_path / "loud"))
    assert r.returncode == 0 and "[llm-tuning] data:" in r.stdout and "Saving the dataset" not in r.stderr, r.stderr
    r = run_cli(*common, "--output-dir", str(tmp_path / "quiet"), "--quiet", "--precision", "fp16")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == FP16_HINT
    assert (tmp_path / "quiet" / "llm_tuning.json").exists() and (tmp_path / "quiet" / "log.jsonl").exists()
