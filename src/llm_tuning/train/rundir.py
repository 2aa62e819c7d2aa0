"""The run folder: resumable checkpoints, the final artefacts written atomically, the figures of earlier runs.

A checkpoint is only resumable once a COMPLETE marker is written after the Trainer finished saving it, so a kill
during a save never leaves a half-written checkpoint that --resume would load. The final artefacts are written to
a temporary folder and moved into place, the run-info file last (its presence means "finished").
"""

from __future__ import annotations

import json
import os
import re
import shutil

from ..errors import UserError
from ..methods import RUN_INFO

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# the training process's figures a resumed finished run keeps (its mean training loss goes through train_loss)
TRAINING_FIGURES = ("train_tokens", "train_seconds", "rss_before_model_mib", "peak_rss_mib", "startup_seconds")


def log(msg: str):
    print(f"[llm-tuning] {msg}", flush=True)


def complete_checkpoints(output_dir: str) -> list[str]:
    """Checkpoints that were fully written, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT.match(name)
        if m and os.path.exists(os.path.join(output_dir, name, COMPLETE)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return [p for _, p in sorted(found)]


def mark_complete(output_dir: str, step: int):
    """Called once the Trainer has written model, optimiser, scheduler, RNG and state of `step`."""
    ckpt = os.path.join(output_dir, f"checkpoint-{step}")
    if os.path.isdir(ckpt):
        with open(os.path.join(ckpt, COMPLETE), "w") as f:
            f.write(str(step))
            f.flush()
            os.fsync(f.fileno())


def _drop_incomplete_checkpoints(output_dir: str):
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if _CKPT.match(name) and not os.path.exists(os.path.join(path, COMPLETE)):
            log(f"removing {path}: its save never finished")
            shutil.rmtree(path, ignore_errors=True)


def prepare_output_dir(out: str, resume: bool, overwrite: bool) -> str | None:
    """Returns the checkpoint to resume from, if any."""
    if os.path.isfile(out):
        raise UserError(f"--output-dir {out}: is a file")
    if resume:
        ckpts = complete_checkpoints(out)
        if not ckpts:
            log(f"--resume: no complete checkpoint in {out}; starting from the beginning")
            return None
        _drop_incomplete_checkpoints(out)
        return ckpts[-1]
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise UserError(f"--output-dir {out}: not empty; pass --resume to continue the run in it, or --overwrite to replace it")
        shutil.rmtree(out)
    return None


def earlier_metrics(output_dir: str, steps: int) -> dict | None:
    """metrics.json of the process that trained this finished run, if it wrote one for these steps."""
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("steps") == steps and m.get("train_seconds") else None


def write_final(cfg, method, model, tokenizer, metrics: dict):
    out = cfg.output_dir
    tmp = os.path.join(out, ".final-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    method.save(model, tmp)
    tokenizer.save_pretrained(tmp)
    import yaml

    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    shutil.rmtree(tmp)
    # Written last: its presence says the folder holds a finished adapter.
    with open(os.path.join(out, RUN_INFO), "w") as f:
        json.dump({"method": method.name, "base_model": cfg.model, "template": cfg.template,
                   "max_length": cfg.max_length, "config": cfg.to_dict()}, f, indent=2, ensure_ascii=False)
