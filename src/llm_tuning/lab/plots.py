"""The comparison's plots, readable with a dozen runs and more: colours by method family (shades within one),
legends outside the axes, names on the y axis of horizontal bars, the base model as a dashed reference line,
error bars of one standard deviation over seeds."""

from __future__ import annotations

import math

BASE_STYLE = dict(color="#444444", linestyle="--", linewidth=1.2)
EMA_BETA = 0.8  # training-loss smoothing: each step counts 0.2, older steps decay geometrically


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors(rows) -> dict:
    """Run name -> colour: one hue per method family, lighter and darker shades for its variants."""
    import matplotlib.colors as mc

    from ..methods import METHODS

    families = {}
    for r in rows:
        families.setdefault(r["method"], []).append(r["name"])
    out = {}
    for method, names in families.items():
        h, s, v = mc.rgb_to_hsv(mc.to_rgb(METHODS[method].color if method in METHODS else "#7f7f7f"))
        for i, name in enumerate(names):
            shift = 0 if len(names) == 1 else (i / (len(names) - 1) - 0.5) * 0.6  # -0.3 .. +0.3
            out[name] = mc.hsv_to_rgb((h, min(1, max(0.25, s - shift)), min(1, max(0.35, v + shift * 0.5))))
    return out


def ema(values, beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (the first points are not pulled to 0)."""
    out, acc = [], 0.0
    for t, x in enumerate(values, 1):
        acc = beta * acc + (1 - beta) * x
        out.append(acc / (1 - beta ** t))
    return out


def _mean_curve(curves):
    """Steps and the mean over seeds at each step every seed logged."""
    by_step: dict = {}
    for curve in curves:
        for step, value in curve:
            if value is not None and math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(s for s, v in by_step.items() if len(v) == len(curves))
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _legend_outside(fig, ax, ncol=1):
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, ncol=ncol, frameon=False)


def plot_curves(rows, base, path):
    """Training loss (raw per seed, faint; smoothed mean, solid) and the validation loss during training."""
    plt = _plt()
    col = colors(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for r in ok:
        for curve in r.get("loss_curves") or []:
            if curve:
                ax1.plot(*zip(*curve), color=col[r["name"]], alpha=0.15, linewidth=0.8)
        steps, mean = _mean_curve(r.get("loss_curves") or [])
        if steps:
            ax1.plot(steps, ema(mean), color=col[r["name"]], linewidth=1.6, label=r["name"])
        steps, mean = _mean_curve(r.get("val_curves") or [])
        if steps:
            ax2.plot(steps, mean, color=col[r["name"]], linewidth=1.6, marker="o", markersize=3)
    if base and base.get("val_loss") is not None:
        ax2.axhline(base["val_loss"], **BASE_STYLE)
        ax2.annotate("base", (0, base["val_loss"]), xycoords=("axes fraction", "data"), fontsize=8,
                     va="bottom", color=BASE_STYLE["color"])
    ax1.set_title(f"Training loss (EMA {EMA_BETA}, seed mean; raw per seed faint)", fontsize=10)
    ax2.set_title("Validation loss during training (seed mean)", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("loss (response tokens)")
    _legend_outside(fig, ax1)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _hbars(ax, ok, key, base_value, col, digits, scores=False):
    """Horizontal bars of `key` (mean ± std) per run, the base's value a dashed line. scores: 0..100 figures,
    drawn from 0; otherwise the axis spans the values (a loss may not start at 0, a difference may be negative)."""
    y = list(range(len(ok)))
    values = [r[key] for r in ok]
    errs = [r.get(key + "_std") or 0 for r in ok]
    ax.barh(y, values, xerr=errs, color=[col[r["name"]] for r in ok], capsize=3, height=0.7)
    ax.set_yticks(y, [f"{r['name']}  ({r['trainable_params']:,} params)" for r in ok], fontsize=8)
    ax.invert_yaxis()
    for yi, v, e in zip(y, values, errs):
        ax.annotate(f"{v:.{digits}f}" + (f" ± {e:.{digits}f}" if e else ""), (max(v + e, v), yi), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ref = [] if base_value is None else [base_value]
    lo = min([v - e for v, e in zip(values, errs)] + ref)
    hi = max([v + e for v, e in zip(values, errs)] + ref)
    if base_value is not None:
        ax.axvline(base_value, **BASE_STYLE, label=f"base {base_value:.{digits}f}")
        ax.legend(fontsize=8, loc="lower right")
    span = max(hi - lo, 1.0 if scores else 0.05)
    left = 0 if scores else lo - 0.3 * span
    ax.set_xlim(max(0, left) if key.endswith("loss") else left, hi + 0.35 * span)  # a loss is >= 0
    ax.grid(axis="x", alpha=0.3)


def _base_value(base, key):
    return base.get(key) if base and base.get("status", "ok") == "ok" else None


def plot_heldout(rows, base, path):
    """Held-out loss per run, mean ± std over seeds, runs sorted by trainable parameters, the base as a line."""
    plt = _plt()
    ok = sorted((r for r in rows if r.get("heldout_loss") is not None), key=lambda r: r["trainable_params"])
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * max(1, len(ok))), dpi=110)
    if ok:
        _hbars(ax, ok, "heldout_loss", _base_value(base, "heldout_loss"), colors(rows), 3)
    ax.set_xlabel("held-out loss (lower is better; bars: mean ± std over seeds)")
    ax.set_title("Held-out loss by run (sorted by trainable parameters)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_forgetting(rows, base, path) -> bool:
    """Forgetting per run (the loss on the forgetting texts minus the base's), mean ± std over seeds, runs sorted
    by trainable parameters, the base at 0. False (nothing written) when no run has it."""
    ok = sorted((r for r in rows if r.get("forgetting") is not None), key=lambda r: r["trainable_params"])
    if not ok:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * len(ok)), dpi=110)
    _hbars(ax, ok, "forgetting", 0.0, colors(rows), 4)
    ax.set_xlabel("forgetting: loss on the forgetting texts minus the base's (lower is better; mean ± std over seeds)")
    ax.set_title("Forgetting by run (sorted by trainable parameters)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_scores(rows, base, path):
    """ROUGE-L and BLEU-4 of greedy answers per run, mean ± std over seeds, the base as a line."""
    plt = _plt()
    ok = sorted((r for r in rows if r.get("rouge_l") is not None), key=lambda r: r["trainable_params"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.38 * max(1, len(ok))), dpi=110, sharey=True)
    for ax, key, label in zip(axes, ("rouge_l", "bleu_4"), ("ROUGE-L", "BLEU-4")):
        if ok:
            _hbars(ax, ok, key, _base_value(base, key), colors(rows), 2, scores=True)
        ax.set_xlabel(f"{label} (higher is better)")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lr_sweep(rows, base, path) -> bool:
    """Validation loss against learning rate per run (mean ± std over the sweep seeds), the chosen rate
    starred. False (nothing written) when no run swept."""
    swept = [r for r in rows if r.get("sweep")]
    if not swept:
        return False
    plt = _plt()
    col = colors(rows)
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    for r in swept:
        pts = [(s["lr"], s["val_mean"], s["val_std"] or 0) for s in r["sweep"] if s["val_mean"] is not None]
        if not pts:
            continue
        lrs, means, stds = zip(*pts)
        ax.errorbar(lrs, means, yerr=stds, color=col[r["name"]], marker="o", markersize=4, capsize=3,
                    linewidth=1.3, label=r["name"])
        chosen = next((s for s in r["sweep"] if s["lr"] == r.get("lr")), None)
        if chosen:  # a star; hollow where the best rate is still the sweep's edge (not bracketed)
            ax.plot([chosen["lr"]], [chosen["val_mean"]], marker="*", markersize=13, linestyle="none",
                    color=col[r["name"]] if r.get("bracketed") is not False else "white", markeredgecolor="black")
    if base and base.get("val_loss") is not None:
        ax.axhline(base["val_loss"], **BASE_STYLE, label="base")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale; star: the rate chosen, hollow: still at the sweep's edge)")
    ax.set_ylabel("validation loss after training")
    ax.set_title("Learning-rate sweep: validation loss (never the held-out records)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend_outside(fig, ax)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_budgets(done: list[dict], path: str):
    """Held-out loss (mean ± std over seeds) against the training budget, one line per run, the base dashed."""
    plt = _plt()
    first = done[0]["results"]
    col = colors(first)
    xs = [d["summary"]["budget"] for d in done]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    for run in first:
        pts = []
        for x, d in zip(xs, done):
            r = next((y for y in d["results"] if y["name"] == run["name"]), None)
            if r and r.get("status") == "ok" and r.get("heldout_loss") is not None:
                pts.append((x, r["heldout_loss"], r.get("heldout_loss_std") or 0))
        if pts:
            bx, means, stds = zip(*pts)
            ax.errorbar(bx, means, yerr=stds, color=col[run["name"]], marker="o", markersize=4, capsize=3,
                        linewidth=1.3, label=run["name"])
    base = done[0]["base"]
    if base.get("status") == "ok":
        ax.axhline(base["heldout_loss"], **BASE_STYLE, label="base")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}x ({d['summary']['steps']} steps)" for x, d in zip(xs, done)])
    ax.minorticks_off()
    ax.set_xlabel("training budget (tokens; log scale)")
    ax.set_ylabel("held-out loss (lower is better)")
    ax.set_title("Held-out loss against the training budget (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


FRONT_STYLE = dict(color=(0.1, 0.3, 0.9, 0.3), linewidth=5, solid_capstyle="round", zorder=0)


def plot_pareto(rows, base, path: str, quality: str = "heldout_loss") -> bool:
    """`quality` (a key of pareto.QUALITIES: held-out loss, forgetting) against each cost of pareto.COSTS (training
    memory, trainable parameters on a log scale, training tokens/s): one point per run, error bars of one std
    over seeds on both axes, the base model's value dashed, the runs of the Pareto front joined. False (nothing
    written) when no run has the figure."""
    from .pareto import COSTS, QUALITIES, front

    key, label, base_ref = next(q for q in QUALITIES if q[0] == quality)
    ok = [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]
    if not ok:
        return False
    base_y = base_ref if not isinstance(base_ref, str) else (base or {}).get(base_ref)
    plt = _plt()
    col = colors(rows)
    fig, axes = plt.subplots(1, len(COSTS), figsize=(16, 5.2), dpi=110, sharey=True)
    for ax, (cost, xlabel, lower, log) in zip(axes, COSTS):
        pts = [r for r in ok if r.get(cost) is not None]
        for r in pts:
            ax.errorbar(r[cost], r[key], xerr=r.get(cost + "_std") or 0, yerr=r.get(key + "_std") or 0, fmt="o",
                        color=col[r["name"]], markersize=6, capsize=2, linewidth=1, label=r["name"])
            ax.annotate(r["name"], (r[cost], r[key]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        on_front = front([(r[cost], r[key]) for r in pts], x_lower=lower)
        ax.plot([pts[i][cost] for i in on_front], [pts[i][key] for i in on_front], marker="o", markersize=14,
                label="Pareto front (no run better on both axes)", **FRONT_STYLE)
        if base_y is not None:
            ax.axhline(base_y, **BASE_STYLE, label=f"base {base_y:.4f}")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"{label.split(' (')[0].split(':')[0].capitalize()} against the costs of training (mean ± std "
                 f"over seeds)", fontsize=11)
    _legend_outside(fig, axes[0])
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True
