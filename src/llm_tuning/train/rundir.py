"""The run folder: resumable checkpoints, the final artefacts written atomically, the figures of earlier runs.

A checkpoint is only resumable once a COMPLETE marker is written after the Trainer finished saving it, so a kill
during a save never leaves a half-written checkpoint that --resume would load. The final artefacts are written to
a temporary folder and moved into place, the run-info file last (its presence means "finished").

Under N processes (torchrun, `accelerate launch`: DDP), one process owns the folder: rank 0 prepares it (and
may empty it with --overwrite) before any other looks at it, writes the markers, the log and the final
artefacts; the others wait for it at a barrier (processes.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil

from ..errors import UserError, spell
from ..log import log
from ..methods import RUN_INFO
from ..models.facts import shape_facts
from .processes import barrier, check_resume_under_processes, is_main_process, start_process_group, world_size

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# the training process's figures a resumed finished run keeps (its mean training loss goes through train_loss)
TRAINING_FIGURES = ("train_tokens", "train_seconds", "rss_before_model_mib", "peak_rss_mib", "startup_seconds")



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
        check_resume_under_processes()  # before anything in the folder is removed
        _drop_incomplete_checkpoints(out)
        return ckpts[-1]
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise UserError(f"{spell('output_dir', out)}: not empty; pass {spell('resume')} to continue the run in it, "
                            f"or {spell('overwrite')} to replace it")
        shutil.rmtree(out)
    return None


def prepare_output_dir_once(out: str, resume: bool, overwrite: bool) -> str | None:
    """prepare_output_dir on rank 0 only; the other processes wait for it and get its answer (the checkpoint to
    resume from, or its error, which every process then raises)."""
    if world_size() == 1:
        return prepare_output_dir(out, resume, overwrite)
    import torch.distributed as dist

    start_process_group()
    answer = [None]
    if is_main_process():
        try:
            answer[0] = ("resume", prepare_output_dir(out, resume, overwrite))
        except UserError as e:
            answer[0] = ("error", str(e))
    dist.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise UserError(value)
    return value


def earlier_metrics(output_dir: str, steps: int) -> dict | None:
    """metrics.json of the process that trained this finished run, if it wrote one for these steps."""
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("steps") == steps and m.get("train_seconds") else None


def write_final(cfg, method, model, tokenizer, metrics: dict, state_dict=None):
    """On rank 0 only; every process returns once the folder is finished. state_dict: the whole weights gathered
    from the processes' shards (FSDP, ZeRO-3), saved through save_pretrained (PEFT keeps the adapter's entries)."""
    if is_main_process():
        _write_final(cfg, method, model, tokenizer, metrics, state_dict)
    barrier()


def _write_final(cfg, method, model, tokenizer, metrics: dict, state_dict=None):
    out = cfg.output_dir
    tmp = os.path.join(out, ".final-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if state_dict is None:
        method.save(model, tmp)
    else:
        model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    import yaml

    from .card import write_train_card
    from .loss_plot import PLOT, write_loss_plot

    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    write_loss_plot(os.path.join(tmp, PLOT), metrics["log_history"], metrics.get("base_eval_loss"),
                    (metrics["steps"], metrics.get("eval_loss")), f"{method.name} on {cfg.model}")
    write_train_card(tmp, cfg, method, metrics)  # after the method's save: PEFT's own card is replaced
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    shutil.rmtree(tmp)
    # Written last: its presence says the folder holds a finished adapter.
    with open(os.path.join(out, RUN_INFO), "w") as f:
        json.dump({"method": method.name, "base_model": cfg.model, "base_shape": shape_facts(model.config),
                   "template": cfg.template, "max_length": cfg.max_length, "config": cfg.to_dict()}, f, indent=2,
                  ensure_ascii=False)
