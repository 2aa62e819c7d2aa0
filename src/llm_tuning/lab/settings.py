"""A compare YAML read and checked: its top-level keys against CompareConfig, every train option (top level,
`common`, or per run) against TrainConfig's fields, and each run's learning rates (one, a list, or auto)."""

from __future__ import annotations

import dataclasses
import math
import re

from ..config import FIELDS, CompareConfig
from ..errors import UserError
from ..options import coerce, load_yaml, unknown_option

COMPARE_FIELDS = {f.name: f for f in dataclasses.fields(CompareConfig)}
# Train options the comparison sets itself for every run (its split, seeds, budget and checkpoints).
SET_BY_COMPARE = ("model", "data", "output_dir", "val_size", "val_data", "seed", "max_steps", "epochs", "save_steps",
                  "eval_steps", "resume", "overwrite")


def _lr_spec(value, source: str):
    """None, a positive number, a non-empty list of positive numbers, or 'auto'."""
    if value is None or value == "auto":
        return value
    values = value if isinstance(value, list) else [value]
    try:
        rates = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        rates = []
    if not values or len(rates) != len(values) or not all(math.isfinite(r) and r > 0 for r in rates):
        raise UserError(f"{source}: 'lr' must be a positive number, a list of them, or auto (got {value!r})")
    return rates if isinstance(value, list) else rates[0]


def _train_options(values: dict, source: str, forbidden=()) -> dict:
    out = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in FIELDS:
            raise unknown_option(key, FIELDS, source)
        if k in forbidden:
            raise UserError(f"{source}: {key!r} is set by compare for every run; see docs/compare.md")
        out[k] = coerce(FIELDS[k], value, source)
    return out


def _runs(runs, path: str) -> list[dict]:
    if not isinstance(runs, list) or not all(isinstance(r, dict) and r.get("name") and r.get("method") for r in runs):
        raise UserError(f"{path}: 'runs' must be a list of mappings, each with a name and a method")
    out = []
    for r in runs:
        name = str(r["name"])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name) or name == "base":
            raise UserError(f"{path}: run name {name!r}: use letters, digits and . _ + - (a folder is named after "
                            "it; 'base' is the untouched model's row)")
        source = f"{path}: run {name!r}"
        opts = _train_options({k: v for k, v in r.items() if k not in ("name", "lr")}, source, SET_BY_COMPARE)
        out.append({"name": name, "lr": _lr_spec(r.get("lr"), source), **opts})
    names = [r["name"] for r in out]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: run names must be unique")
    return out


def _compare_value(key: str, value, path: str):
    f = COMPARE_FIELDS[key]
    if key == "lr":
        return _lr_spec(value, path)
    if key in ("seeds", "lr_factors", "budgets"):
        items = value if isinstance(value, list) else [value]
        kind = int if key == "seeds" else float
        try:
            items = [kind(v) for v in items if not isinstance(v, bool) and (kind is float or float(v).is_integer())]
        except (TypeError, ValueError):
            items = []
        if not items or len(items) != (len(value) if isinstance(value, list) else 1) or \
                (key != "seeds" and not all(x > 0 for x in items)) or len(set(items)) != len(items):
            raise UserError(f"{path}: {key!r} must be a list of distinct {'integers' if kind is int else 'positive numbers'}"
                            f" (got {value!r})")
        return items
    if key == "common":
        if not isinstance(value, dict):
            raise UserError(f"{path}: 'common' must be a mapping of train options")
        return _train_options(value, f"{path}: common", SET_BY_COMPARE)
    if key == "runs":
        return _runs(value, path)
    return coerce(f, value, path)


def load_compare_config(path: str) -> tuple[CompareConfig, dict]:
    """(the compare settings, the train options shared by every run: top-level train keys and `common`)."""
    raw = load_yaml(path)
    values, shared = {}, {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k in COMPARE_FIELDS:
            values[k] = _compare_value(k, value, path)
        elif k in FIELDS:
            if k in SET_BY_COMPARE and k != "seed":
                raise UserError(f"{path}: {key!r} is set by compare for every run; see docs/compare.md")
            shared[k] = coerce(FIELDS[k], value, path)
        else:
            raise unknown_option(key, [*COMPARE_FIELDS, *FIELDS], path)
    for key in ("model", "data", "output_dir", "runs"):
        if not values.get(key):
            raise UserError(f"{path}: {key!r} is required")
    shared.update(values.pop("common", {}))
    if "lr" in shared:  # a rate in `common` is the runs' default rate, as a top-level lr is
        values.setdefault("lr", shared.pop("lr"))
    cc = CompareConfig(**values)
    if not cc.budget_tokens and not cc.max_steps:
        raise UserError(f"{path}: set either budget_tokens or max_steps")
    # heldout_size, val_size, parallel, ...: their ranges are declared in CompareConfig and checked by coerce
    shared.setdefault("batch_size", 8)
    if shared["batch_size"] == 0 or any(r.get("batch_size") == 0 for r in cc.runs):
        raise UserError(f"{path}: batch_size auto: every run of a comparison trains the same tokens per step; give "
                        "a number")
    if not cc.seeds:
        cc.seeds = [shared.get("seed", 42)]
    shared.pop("seed", None)
    return cc, shared


def lr_grid(run: dict, cc: CompareConfig, centre: float | None = None) -> list[float]:
    """The rates a run trains at: its own lr (or the top-level one): one, a list, or auto around the method's
    default rate (or around `centre`, the rate chosen at a smaller budget); none set: the method's default alone."""
    from ..methods import get_method

    spec = run["lr"] if run.get("lr") is not None else cc.lr
    if isinstance(spec, list):
        return sorted(spec)
    if spec is not None and spec != "auto":
        return [spec]
    if spec == "auto" and centre:
        return sorted(float(f"{centre * f:.3g}") for f in cc.lr_factors)
    default = get_method(run["method"]).default_lr
    if callable(default):  # a method whose default depends on its options
        from ..config import TrainConfig

        default = default(TrainConfig(**{k: v for k, v in run.items() if k in FIELDS}))
    if spec is None:
        return [default]
    return sorted(float(f"{default * f:.3g}") for f in cc.lr_factors)


def budget_folder(budget: float) -> str:
    """A budget's sub-folder of a comparison at several budgets: budget-1x, budget-4x, budget-0.5x."""
    return f"budget-{budget:g}x"
