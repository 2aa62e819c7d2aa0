"""`llm-tuning demo`, shortened: the answer and the loss improve from the base to the merged model."""

import os
import re

from conftest import run_cli


def _before_after(stdout: str, label: str) -> tuple[float, float]:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    before, after = re.findall(r"\d+\.\d+", line[len(label):])
    return float(before), float(after)


def test_demo_shows_lora_learning_its_records(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--output-dir", str(out), "--steps", "40", "--pretrain-steps", "250")
    assert r.returncode == 0, r.stderr[-2000:]
    rouge_before, rouge_after = _before_after(r.stdout, "ROUGE-L of the answer")
    loss_before, loss_after = _before_after(r.stdout, "loss on the 20 LoRA training records")
    assert rouge_after > rouge_before, r.stdout[-1500:]
    assert loss_after < loss_before, r.stdout[-1500:]
    assert os.path.exists(out / "merged" / "config.json")
    assert "before LoRA:" in r.stdout and "after LoRA:" in r.stdout
