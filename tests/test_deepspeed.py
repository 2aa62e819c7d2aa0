"""DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes over gloo, launched as a user does (`accelerate launch` with the
shipped configs), equals one process with the same global batch: per-step loss and final weights within 1e-5
(dropout 0). Only rank 0 writes; the saved adapter / model loads with plain PEFT / transformers; --resume from a
checkpoint ends where the uninterrupted run ends; metrics.json counts ZeRO-3's partitioned parameters and records
every process's peak RSS."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SAMPLE, run_cli

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.engines,
              pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU processes over gloo; GPUs take NCCL")]

STEPS = 4
TOL = 1e-5


def _args(model, out, method, batch_size, val=True):
    # dropout 0: each process draws its own dropout masks; --val-size 8 gives the held-out loss to compare
    return ["train", "--model", model, "--data", SAMPLE, "--method", method, "--max-steps", str(STEPS),
            "--save-steps", "2", "--max-length", "64", "--lora-dropout", "0", "--val-size", "8" if val else "0",
            "--batch-size", str(batch_size), "--output-dir", str(out)]


def _zero(stage, *args):
    """`accelerate launch --config_file examples/accelerate/deepspeed_zero<stage>.yaml -m llm_tuning ...`, from the
    project root (the YAML names its JSON relative to it)."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    config = os.path.join("examples", "accelerate", f"deepspeed_zero{stage}.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [accelerate, "launch", "--config_file", config, "-m", "llm_tuning", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _read(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def _losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [(e["step"], e["loss"]) for e in map(json.loads, f) if "loss" in e]


def _weights(out):
    name = "adapter_model.safetensors" if os.path.exists(os.path.join(out, "adapter_model.safetensors")) \
        else "model.safetensors"
    return load_file(os.path.join(out, name))


def _assert_same_run(single, zero):
    a, b = _losses(single), _losses(zero)
    assert [s for s, _ in b] == list(range(1, STEPS + 1))  # one line per step: rank 1 wrote none
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= TOL, (step, x, y)
    wa, wb = _weights(single), _weights(zero)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape and (wa[k] - wb[k]).abs().max().item() <= TOL, k
    ma, mb = _read(single, "metrics.json"), _read(zero, "metrics.json")
    if ma["eval_loss"] is not None:
        assert abs(ma["eval_loss"] - mb["eval_loss"]) <= TOL
    assert (ma["trainable_params"], ma["total_params"]) == (mb["trainable_params"], mb["total_params"])


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """run(stage, method, val): the run folder (and its stdout) of one process (stage 0, batch 4) or of ZeRO-<stage>
    on 2 processes (batch 2 each), trained once per module when a test first asks for it."""
    tmp = tmp_path_factory.mktemp("zero")
    done = {}

    def get(stage, method, val=True):
        key = (stage, method, val)
        if key not in done:
            out = tmp / f"zero{stage}-{method}-{'val' if val else 'noval'}"
            if stage == 0:
                r = run_cli(*_args(tiny_models["llama"], out, method, 4, val))
                assert r.returncode == 0, r.stderr[-3000:]
            else:
                r = _zero(stage, *_args(tiny_models["llama"], out, method, 2, val))
            done[key] = out, r.stdout
        return done[key]

    get.model = tiny_models["llama"]
    return get


def test_zero2_lora_equals_one_process(run):
    (single, _), (zero, stdout) = run(0, "lora"), run(2, "lora")
    _assert_same_run(single, zero)
    assert stdout.count("saved the lora adapter") == 1 and stdout.count("data: ") == 1  # rank 0 alone logs
    # the adapter loads with plain PEFT, its weights the run's
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.model), str(zero))
    saved = _weights(zero)
    loaded = {k: v for k, v in tuned.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for k, v in saved.items():
        match = [w for name, w in loaded.items() if name.replace(".default", "") == k]
        assert len(match) == 1 and torch.equal(match[0], v), k


def test_zero3_lora_equals_one_process(run):
    """ZeRO-3 partitions the base's weights too: the adapter is gathered for the save, and metrics.json counts the
    partitioned weights at their size (each process holds an empty placeholder of them; no held-out pass here)."""
    (single, _), (zero, stdout) = run(0, "lora", val=False), run(3, "lora", val=False)
    _assert_same_run(single, zero)
    assert stdout.count("saved the lora adapter") == 1
    assert all(v.numel() > 0 for v in _weights(zero).values())


def test_zero3_full_equals_one_process(run):
    (single, _), (zero, _) = run(0, "full"), run(3, "full")
    _assert_same_run(single, zero)
    # ZeRO-3 leaves each process a shard: the full model was gathered for the save and loads as a whole
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(zero))
    saved = _weights(zero)
    state = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    metrics = _read(zero, "metrics.json")
    assert metrics["total_params"] == sum(p.numel() for p in model.parameters())  # not the shards' placeholders
    peaks = metrics["peak_rss_mib_per_process"]
    assert len(peaks) == 2 and all(p > 0 for p in peaks) and metrics["peak_rss_mib"] == peaks[0]
    for step in (2, 4):
        ckpt = os.path.join(zero, f"checkpoint-{step}")
        assert os.path.exists(os.path.join(ckpt, "COMPLETE"))
        # DeepSpeed's checkpoint: every process saves its own optimizer shard
        shards = os.listdir(os.path.join(ckpt, f"global_step{step}"))
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(shards)


def test_resume_under_zero3(run, tmp_path):
    (single, _), (zero, _) = run(0, "full"), run(3, "full")
    # what a kill during the save of step 4 leaves: checkpoint-4 unmarked, no final artefacts, the log to step 2
    cut = tmp_path / "cut"
    shutil.copytree(zero, cut)
    os.remove(cut / "checkpoint-4" / "COMPLETE")
    for name in ("model.safetensors", "config.json", "llm_tuning.json", "metrics.json"):
        os.remove(cut / name)
    with open(cut / "log.jsonl") as f:
        kept = [line for line in f if json.loads(line)["step"] <= 2]
    with open(cut / "log.jsonl", "w") as f:
        f.writelines(kept)
    r = _zero(3, *_args(run.model, cut, "full", 2), "--resume")
    assert f"resuming from {cut / 'checkpoint-2'}" in r.stdout
    _assert_same_run(single, cut)
    assert _losses(cut) == _losses(zero)
