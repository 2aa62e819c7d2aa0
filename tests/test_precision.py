"""Half precision: bf16/fp16 LoRA learns with finite loss, fp16 full fine-tuning is safe by default,
and a non-finite loss or weight stops training with a clear error and an intact checkpoint."""

import json
import math

import pytest
import torch

from conftest import EN_DATA, SAMPLE, STORIES, need_shared, run_cli
from llm_tuning.config import TrainConfig
from llm_tuning.train import train


def _losses(result):
    return [e["loss"] for e in result.log_history if "loss" in e]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_lora_learns(precision, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(json.load(open(need_shared(EN_DATA)))[:64]))
    r = train(TrainConfig(model=need_shared(STORIES), data=str(data), method="lora", precision=precision,
                          output_dir=str(tmp_path / "o"), max_steps=24, batch_size=8, max_length=96, save_steps=100,
                          seed=0, lora_dropout=0.0))
    losses = _losses(r)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "o" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapter.values())  # adapter weights trained in fp32


def test_fp16_full_finetune_is_safe_by_default(tiny_models, tmp_path):
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--method", "full", "--precision", "fp16",
                "--max-steps", "8", "--max-length", "96", "--output-dir", str(tmp_path / "o"), "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    assert "AdamW epsilon 1e-8 rounds to 0 in fp16, using 1e-4" in r.stdout
    losses = [e["loss"] for e in json.load(open(tmp_path / "o" / "metrics.json"))["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses) and max(losses) < losses[0] + 0.5


def _diverging_full_run(model, out, max_steps, save_steps):
    """fp16 full fine-tuning at lr 1000: stops on non-finite loss or weights with the one-line error; the step."""
    r = run_cli("train", "--model", model, "--data", SAMPLE, "--method", "full", "--precision", "fp16", "--lr", "1000",
                "--max-steps", str(max_steps), "--save-steps", str(save_steps), "--max-length", "96",
                "--output-dir", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "training stopped at step" in r.stderr and "try a lower --lr" in r.stderr
    assert not (out / "llm_tuning.json").exists()
    return int(r.stderr.split("training stopped at step ")[1].split(":")[0]), r.stderr


def test_non_finite_training_stops_with_intact_checkpoint(tiny_models, tmp_path):
    out = tmp_path / "o"
    step, stderr = _diverging_full_run(tiny_models["llama"], out, max_steps=20, save_steps=1)
    assert not (out / f"checkpoint-{step}").exists()
    if step > 1:
        assert (out / f"checkpoint-{step - 1}" / "COMPLETE").exists()
        assert f"checkpoint-{step - 1}" in stderr


def test_non_finite_training_without_checkpoints_writes_nothing(tiny_models, tmp_path):
    # the weights are checked before saves and after the last step, not after every step: with no save in the
    # run the bad state must still not reach the output folder
    out = tmp_path / "o"
    _diverging_full_run(tiny_models["llama"], out, max_steps=6, save_steps=1000)
    assert not list(out.glob("checkpoint-*")) and not list(out.glob("*.safetensors"))
