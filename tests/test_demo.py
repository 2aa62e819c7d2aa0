"""`llm-tuning demo` at its defaults (what `make demo` shows): the merged model writes its record back.

A shortened run (40 LoRA steps on a 250-step base) once passed and then, with transformers 5.25, lowered
ROUGE-L (17.4 -> 16.4) while the loss fell 5.57 -> 2.42: too few steps to judge on. The defaults take
about 35 s on two cores and leave no doubt (loss 8.6 -> 0.05, ROUGE-L 3.8 -> 100 on AMD EPYC)."""

import os
import re

from conftest import run_cli


def _before_after(stdout: str, label: str) -> tuple[float, float]:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    before, after = re.findall(r"\d+\.\d+", line[len(label):])
    return float(before), float(after)


def test_demo_shows_lora_learning_its_records(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rouge_before, rouge_after = _before_after(r.stdout, "ROUGE-L of the answer")
    loss_before, loss_after = _before_after(r.stdout, "loss on the 20 LoRA training records")
    assert rouge_before < 50 and rouge_after >= 90, r.stdout[-1500:]
    assert loss_after < 0.1 * loss_before, r.stdout[-1500:]
    assert os.path.exists(out / "merged" / "config.json")
    assert "before LoRA:" in r.stdout and "after LoRA:" in r.stdout
