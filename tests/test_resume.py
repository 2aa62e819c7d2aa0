"""Interrupt and resume from one command: config.yaml is written as the run starts, `train --output-dir X --resume`
alone continues the run from its checkpoint, options that contradict the run's checkpoints are refused in one line
(exit 2) before the Trainer meets them, and Ctrl-C names the last complete checkpoint and the command that goes on."""

import json
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SAMPLE, run_cli


def _args(model, out, *extra):
    return ["train", "--model", model, "--data", SAMPLE, "--batch-size", "2", "--max-length", "64",
            "--lora-r", "4", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def two_steps(tiny_models, tmp_path_factory):
    """A LoRA run of 2 steps, its checkpoint-2 complete."""
    out = tmp_path_factory.mktemp("resume") / "run"
    r = run_cli(*_args(tiny_models["llama"], out, "--max-steps", "2", "--save-steps", "2"))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("whole,flags,named", [
    (False, ["--method", "prefix"], "--method prefix"),
    (False, ["--lora-r", "16"], "--lora-r 16"),
    (False, ["--max-length", "32", "--method", "ia3"], "--method ia3, --max-length 32"),
    (True, ["--method", "prefix"], "--method prefix"),  # the whole command again: the Trainer's KeyError before
], ids=["method", "lora-r", "two", "whole-command"])
def test_options_that_contradict_the_run_are_refused_in_one_line(two_steps, tiny_models, whole, flags, named):
    given = _args(tiny_models["llama"], two_steps, "--max-steps", "4") if whole else ["train", "--output-dir",
                                                                                      str(two_steps)]
    r = run_cli(*given, "--resume", *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert f"llm-tuning train: error: --resume: {named} contradict" in r.stderr
    assert f"the run in {two_steps} (" in r.stderr and "in its config.yaml" in r.stderr


def test_resume_alone_continues_from_the_checkpoint(two_steps, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_steps, run)
    r = run_cli("train", "--output-dir", str(run), "--resume", "--max-steps", "4")  # a longer run: no contradiction
    assert r.returncode == 0, r.stderr
    assert f"resuming from {run}/checkpoint-2" in r.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4
    steps = [e["step"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in e]
    assert steps[-2:] == [3, 4]  # this process trained steps 3 and 4 only
    assert (run / "llm_tuning.json").exists()


def test_ctrl_c_names_the_checkpoint_and_the_command_that_continues(tiny_models, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "llm_tuning", *_args(tiny_models["llama"], out, "--max-steps",
                             "40", "--save-steps", "2")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint-2" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.01)
    assert (out / "config.yaml").exists()  # written as the run started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not (out / "llm_tuning.json").exists()  # it really stopped mid-way
    line = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"llm-tuning train: interrupted; the last complete checkpoint is {re.escape(str(out))}/"
                     r"checkpoint-(\d+); continue with: (llm-tuning train .*)", line)
    assert m, line
    command = shlex.split(m.group(2))
    assert command == ["llm-tuning", "train", "--output-dir", str(out), "--resume"]
    r = run_cli(*command[1:])
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out}/checkpoint-{m.group(1)}" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 40
