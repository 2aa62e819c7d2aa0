"""Interrupt and resume: the run's config.yaml, written when the run starts, is what `train --output-dir X
--resume` alone continues; options given beside --resume override it only where a checkpoint does not depend on
them; Ctrl-C names the last complete checkpoint and the command that continues the run.

A checkpoint holds the method's weights for one model's shapes, an optimiser state for those weights and a
position in one tokenised, split and shuffled data set: another model, method, method option, precision,
quantisation, template, length or data would load as a KeyError or a size mismatch deep in the Trainer, or worse
continue silently on other data. Those options are refused in one line instead; the rest (steps, learning rate,
batch size, logging...) may change on resuming.
"""

from __future__ import annotations

import os
import shlex

from ..errors import UserError, spell
from .processes import is_main_process
from .rundir import complete_checkpoints

RUN_CONFIG = "config.yaml"
# What a checkpoint depends on (the chosen method's own options are added to these)
FIXED = ("model", "tokenizer", "trust_remote_code", "precision", "quantization", "method", "data", "encoding",
         "skip_bad_records", "val_data", "val_size", "seed", "template", "train_on", "max_length")
_NOT_CARRIED = ("resume", "overwrite")  # how a run was started is not how it continues


def saved_config(output_dir: str) -> dict | None:
    """The options of the run in `output_dir` as its config.yaml recorded them; None where it has none."""
    import yaml

    path = os.path.join(output_dir, RUN_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except OSError:
        return None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); pass the run's options again") from None
    return saved if isinstance(saved, dict) else None


def with_run_config(flags: dict, file_values: dict | None) -> dict | None:
    """--config's values for a run given --resume: the run's recorded options (its OUTPUT_DIR/config.yaml) under
    the --config file's, which stay under the flags'. Without --resume, the --config file's alone."""
    from ..config.train import FIELDS

    given = {str(k).replace("-", "_"): v for k, v in {**(file_values or {}), **flags}.items()}
    if not given.get("resume") or not given.get("output_dir"):
        return file_values
    saved = saved_config(given["output_dir"]) or {}
    kept = {k: v for k, v in saved.items() if k in FIELDS and k not in _NOT_CARRIED}  # an older run's extra keys go
    return {**kept, **{str(k).replace("-", "_"): v for k, v in (file_values or {}).items()}}


def write_run_config(cfg) -> None:
    """config.yaml as the run starts (rank 0; replaced atomically: a kill never leaves half of it)."""
    if not is_main_process():
        return
    import yaml

    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, RUN_CONFIG)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, allow_unicode=True, sort_keys=False)
    os.replace(path + ".tmp", path)


def check_resume_matches(cfg, method) -> None:
    """A UserError naming the options that contradict the run being resumed (only when it has a checkpoint to
    continue: without one, --resume starts afresh and any options go)."""
    if not cfg.resume or not complete_checkpoints(cfg.output_dir):
        return
    saved = saved_config(cfg.output_dir)
    if not saved:
        return
    keys = FIXED + tuple(name for name, _, _ in method.options)
    differ = [k for k in keys if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        given = ", ".join(spell(k, getattr(cfg, k)) for k in differ)
        was = ", ".join(spell(k, saved[k]) for k in differ)
        raise UserError(f"{spell('resume')}: {given} contradict{'s' if len(differ) == 1 else ''} the run in "
                        f"{cfg.output_dir} ({was} in its {RUN_CONFIG}): its checkpoints hold that model, method and "
                        "data; drop them to continue it, or train in a new --output-dir")


def resume_hint(output_dir: str) -> str:
    """What an interrupted run says: its last complete checkpoint and the command that continues it."""
    ckpts = complete_checkpoints(output_dir)
    command = f"llm-tuning train --output-dir {shlex.quote(output_dir)} --resume"
    if ckpts:
        return f"the last complete checkpoint is {ckpts[-1]}; continue with: {command}"
    return f"no checkpoint was complete yet; start it again with: {command}"
