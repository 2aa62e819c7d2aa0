"""Parameter counts in closed form: the base model (models/arch.py), and what each method trains (its file's
footprint)."""

from __future__ import annotations

import dataclasses

from ..config import TrainConfig
from ..models.arch import EstimateError, arch_of, count_params

__all__ = ["count_params", "trainable_params", "footprint", "options"]


def options(opts) -> TrainConfig:
    """The method options as a TrainConfig (defaults where not given); opts may be a dict or a TrainConfig."""
    if isinstance(opts, TrainConfig):
        return opts
    base = TrainConfig()
    if not opts:
        return base
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in opts if k not in fields]
    if unknown:
        raise EstimateError(f"unknown method option {unknown[0]!r}")
    return dataclasses.replace(base, **{k: v for k, v in opts.items() if v is not None})


def method_of(name: str):
    from ..methods import METHODS

    if name not in METHODS:
        raise EstimateError(f"--method {name!r} is unknown; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def footprint(config, method: str, opts=None):
    """The method's memory terms on this architecture (methods/base.py, Footprint)."""
    return method_of(method).footprint(arch_of(config), options(opts))


def trainable_params(config, method: str, opts=None) -> int:
    """Trainable parameters after applying `method` (closed form, exact for this project's methods)."""
    return footprint(config, method, opts).trainable
