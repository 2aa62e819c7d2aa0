"""The Pareto front of a comparison's runs: quality against a cost, as PEFT's results viewer draws it.

A run is dominated when another is at least as good on both axes and better on one; the others are the front:
for each of them no run is better in both respects at once.
"""

from __future__ import annotations

# the costs the quality is set against: (row key, axis label, lower is better, log scale)
COSTS = (("peak_rss_mib", "training memory, MiB (peak RSS above the RSS before the model load)", True, False),
         ("trainable_params", "trainable parameters (log scale)", True, True),
         ("tokens_per_s", "training tokens/s (higher is faster)", False, False))
# the quality figures: (row key, axis label, the base model's value from its row or a constant)
QUALITIES = (("heldout_loss", "held-out loss (lower is better)", "heldout_loss"),
             ("forgetting", "forgetting: loss on the forgetting texts minus the base's (lower is better)", 0.0))


def dominates(a: tuple[float, float], b: tuple[float, float], x_lower: bool = True, y_lower: bool = True) -> bool:
    """True when point a is at least as good as b on x and y, and better on one of them."""
    sx = 1 if x_lower else -1
    sy = 1 if y_lower else -1
    no_worse = sx * a[0] <= sx * b[0] and sy * a[1] <= sy * b[1]
    return no_worse and (a[0] != b[0] or a[1] != b[1])


def front(points: list[tuple[float, float]], x_lower: bool = True, y_lower: bool = True) -> list[int]:
    """Indices of the non-dominated points, in order of x (ties: in order of y)."""
    keep = [i for i, p in enumerate(points)
            if not any(dominates(q, p, x_lower, y_lower) for j, q in enumerate(points) if j != i)]
    return sorted(keep, key=lambda i: points[i])


def pareto_table(rows: list[dict], quality: str) -> dict:
    """{cost key: names of the runs on the front of `quality` against it} for the runs that have both."""
    out = {}
    for cost, _, lower, _ in COSTS:
        ok = [r for r in rows if r.get("status") == "ok" and r.get(cost) is not None and r.get(quality) is not None]
        idx = front([(r[cost], r[quality]) for r in ok], x_lower=lower)
        out[cost] = [ok[i]["name"] for i in idx]
    return out
