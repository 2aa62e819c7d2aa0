"""Does a run fit a memory budget, and if not, which single change would make it fit: `estimate --memory GIB` (or
--device cuda, the card's memory). Each change is the estimate run again with that change, never a rule of thumb;
only the changes that fit are named."""

from __future__ import annotations

import dataclasses

from ..methods import get_method
from .sizing import largest_fitting


def _changes(cfg, total, budget: int) -> list[tuple[str, object]]:
    """(the flag, the run with it) for each single change that lowers memory and applies to this run."""
    out = []
    if not cfg.quantization and get_method(cfg.method).trains_on_quantized:
        out.append(("--quantization 4bit", dataclasses.replace(cfg, quantization="4bit")))
    if not cfg.gradient_checkpointing:
        out.append(("--gradient-checkpointing", dataclasses.replace(cfg, gradient_checkpointing=True)))
    if cfg.batch_size > 1:
        smaller = lambda b: dataclasses.replace(cfg, batch_size=b)  # noqa: E731
        batch = largest_fitting(lambda b: total(smaller(b)) <= budget, limit=cfg.batch_size - 1)
        if batch:
            out.append((f"--batch-size {batch}", smaller(batch)))
    return out


def verdict(cfg, total, budget: int) -> dict:
    """{budget, needed, fits, share (needed / budget), suggestions: [{change, needed}]}: `total(cfg)` is the run's
    estimated peak in bytes (the figure the budget is held against), `budget` the bytes it may use. The suggestions,
    only when it does not fit: each change whose own estimate fits, with that estimate."""
    needed = total(cfg)
    fits = needed <= budget
    suggestions = [] if fits else [{"change": flag, "needed": n} for flag, run in _changes(cfg, total, budget)
                                   if (n := total(run)) <= budget]
    return {"budget": budget, "needed": needed, "fits": fits, "share": needed / budget, "suggestions": suggestions}
