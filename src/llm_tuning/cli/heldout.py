"""`eval --run DIR` / `--split heldout`: a training run's folder read back, and the records it held out."""

from __future__ import annotations

import dataclasses
import os

from ..config import TrainConfig
from ..errors import UserError
from ..options import build_config, load_yaml

# what --run takes from the run's config.yaml where eval's option is left at its default
RUN_OPTIONS = ("model", "template", "max_length", "precision", "quantization")


def with_run(cfg):
    """--run DIR: the adapter DIR with its run's options (RUN_OPTIONS) where eval's are at their defaults, and
    --split heldout when nothing else is to be scored."""
    if not cfg.run:
        if cfg.split and not cfg.adapter:
            raise UserError("--split heldout needs the run: --run DIR (or --adapter DIR, a folder `llm-tuning "
                            "train` wrote)")
        if cfg.split and cfg.data:
            raise UserError("--split heldout scores the run's held-out records, --data another file; drop one")
        return cfg
    if cfg.adapter and os.path.abspath(cfg.adapter) != os.path.abspath(cfg.run):
        raise UserError(f"--run {cfg.run} is the adapter: drop --adapter {cfg.adapter}")
    if cfg.split and cfg.data:
        raise UserError("--split heldout scores the run's held-out records, --data another file; drop one")
    run = run_config(cfg.run)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    taken = {k: getattr(run, k) for k in RUN_OPTIONS if getattr(cfg, k) == defaults[k]}
    split = cfg.split or (None if cfg.data or cfg.tasks else "heldout")
    return dataclasses.replace(cfg, adapter=cfg.run, split=split, **taken)


def run_config(folder: str):
    """The TrainConfig of the run in `folder`, from its config.yaml."""
    path = os.path.join(folder, "config.yaml")
    if not os.path.isfile(path):
        raise UserError(f"{folder}: no config.yaml, so not a folder `llm-tuning train` wrote; give --model, "
                        "--adapter and --data instead")
    return build_config(TrainConfig, load_yaml(path), {}, path)


def heldout(cfg) -> list:
    """The records the run in --run (or --adapter) held out, recomputed from its config.yaml; the first --limit."""
    from ..train.loop import heldout_records  # train's imports only when a split is asked for

    folder = cfg.run or cfg.adapter
    run = run_config(folder)
    try:
        records = heldout_records(run)
    except UserError as e:
        raise UserError(f"{folder}/config.yaml's data: {e} (paths in it are read from the current folder)") from None
    if not records:
        raise UserError(f"{folder} held out no records (trained without --val-size or --val-data); score a file "
                        "with --data")
    return records[: cfg.limit or None]
