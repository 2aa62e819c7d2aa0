"""loss.png in a run folder: the training loss and the held-out loss against the steps, and the base model's
held-out loss as a dashed line (what the run started from).

Drawn on matplotlib's Agg canvas through its object API, not pyplot: no display needed, and a Python caller's
own pyplot state and backend stay as they were."""

from __future__ import annotations

import math

PLOT = "loss.png"


def _finite(points):
    return [(s, v) for s, v in points if v is not None and math.isfinite(v)]


def loss_figure(log_history: list, base_loss: float | None = None, final: tuple | None = None, title: str = ""):
    """The figure: log_history as the Trainer logs it (`loss` per logged step, `eval_loss` per evaluation);
    final: (step, held-out loss after training), drawn where the last evaluation did not fall on it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = _finite((e["step"], e["loss"]) for e in log_history if "loss" in e)
    heldout = _finite((e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e)
    if final and final[1] is not None and final not in heldout:
        heldout = _finite(sorted({**dict(heldout), final[0]: final[1]}.items()))
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), color="#1f77b4", linewidth=1.2, label="training loss")
    if heldout:
        ax.plot(*zip(*heldout), color="#d62728", marker="o", markersize=4, label="held-out loss")
    if base_loss is not None and math.isfinite(base_loss):
        ax.axhline(base_loss, color="#444444", linestyle="--", linewidth=1.2,
                   label=f"base model, held-out ({base_loss:.4f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean cross-entropy per response token)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig


def write_loss_plot(path: str, log_history: list, base_loss: float | None = None, final: tuple | None = None,
                    title: str = "") -> None:
    loss_figure(log_history, base_loss, final, title).savefig(path, dpi=110)
