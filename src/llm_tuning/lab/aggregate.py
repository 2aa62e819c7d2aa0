"""A run's row from its points: the learning rate chosen on the validation split, mean ± std over seeds at that
rate (lm-eval's scores, when the comparison runs harness tasks, included), the difference to the base model, and
which differences are within noise (Welch's t-test)."""

from __future__ import annotations

import math

from .stats import mean_std, verdict, welch

# (key, lower is better): the figures averaged over seeds
METRICS = (("heldout_loss", True), ("forget_loss", True), ("rouge_l", False), ("bleu_4", False), ("rouge_1", False),
           ("rouge_2", False), ("tokens_per_s", False), ("final_train_loss", True), ("val_loss", True),
           ("peak_rss_mib", True), ("wall_s", True), ("answer_tokens", False), ("answers_at_limit", True),
           ("answers_empty", True), ("repeated_trigrams", True), ("gen_tokens_per_s", False),
           ("gen_speed_ratio", False), ("gen_tokens_per_s_merged", False), ("gen_speed_ratio_merged", False))
COMPARED = ("heldout_loss", "forget_loss", "rouge_l", "bleu_4")  # against the base and the best run
SAME_FOR_EVERY_SEED = ("trainable_params", "total_params", "adapter_bytes", "mergeable", "train_tokens")


def _ok_val(p) -> float | None:
    v = p.get("val_loss") if p and p.get("status") == "ok" else None
    return v if v is not None and math.isfinite(v) else None


def sweep_table(grid: list[float], points: dict, seeds: list[int]) -> list[dict]:
    """Per rate: the validation losses of its seeds, their mean and std; a rate with a failed or non-finite seed
    is out of the running (a rate that diverges once is no choice)."""
    rows = []
    for lr in grid:
        vals = [_ok_val(points.get((lr, s))) for s in seeds]
        m, sd = mean_std(vals)
        rows.append({"lr": lr, "seeds": list(seeds), "val_losses": vals, "val_mean": m, "val_std": sd,
                     "eligible": all(v is not None for v in vals)})
    return rows


def choose_lr(sweep: list[dict]) -> float | None:
    """The rate of least mean validation loss (None when every rate failed)."""
    eligible = [r for r in sweep if r["eligible"]]
    return min(eligible, key=lambda r: r["val_mean"])["lr"] if eligible else None


def edge(grid: list[float], chosen: float | None) -> str | None:
    """"low" or "high" where the chosen rate is the sweep's lowest or highest (its optimum not bracketed), else
    None (every rate beside it is worse or diverged: choose_lr took the least validation loss)."""
    if chosen is None or len(grid) < 2:
        return None
    return "low" if chosen == min(grid) else "high" if chosen == max(grid) else None


def run_row(run: dict, grid: list[float], sweep: list[dict] | None, chosen: float | None, finals: list[dict],
            base: dict | None, estimated_mib, every_point: list[dict]) -> dict:
    """The table's row of one run: figures mean ± std over the seeds at the chosen rate; the training memory from
    the points that were the first of their training process (later ones reuse its allocator's heap) at any rate
    (memory does not depend on the rate)."""
    row = {"name": run["name"], "method": run["method"], "lr_grid": grid, "lr": chosen, "sweep": sweep,
           "bracketed": None if sweep is None else edge(grid, chosen) is None,
           "estimated_mib": estimated_mib, "points": [f"{p['lr']:.3g}/{p['seed']}" for p in finals]}
    ok = [p for p in finals if p.get("status") == "ok"]
    failed = [p for p in finals if p.get("status") != "ok"]
    row["seeds"] = [p["seed"] for p in ok]
    row["seeds_failed"] = [p["seed"] for p in failed]
    if not ok:
        errors = [p.get("error") for p in finals if p.get("error")]
        if chosen is None and sweep:
            errors = errors or ["every learning rate of the sweep failed"]
        row.update(status="failed", error=errors[0] if errors else "no seed trained")
        return row
    row["status"] = "ok"
    if failed:
        row["error"] = f"{len(failed)} of {len(finals)} seeds failed: {failed[0].get('error', '')}"
    for key in SAME_FOR_EVERY_SEED:
        row[key] = ok[0].get(key)
    for key, _ in METRICS:
        values = [p.get(key) for p in ok]
        row[key], row[key + "_std"] = mean_std(values)
        row[key + "_values"] = values
    fresh = [p for p in every_point if p.get("status") == "ok" and p.get("first_in_process")] or ok
    row["peak_rss_mib"], row["peak_rss_mib_std"] = mean_std([p.get("peak_rss_mib") for p in fresh])
    row["peak_rss_mib_values"] = [p.get("peak_rss_mib") for p in fresh]
    row["process_peak_rss_mib"] = max(p.get("process_peak_rss_mib") or 0 for p in fresh)
    row["loss_curves"] = [p.get("loss_curve") or [] for p in ok]
    row["val_curves"] = [p.get("val_curve") or [] for p in ok]
    row["samples"] = ok[0].get("samples")
    lower, columns = dict(METRICS), harness_columns(None, ok)
    for key, higher in columns.items():  # lm-eval's scores, as the figures above
        values = [p.get(key) for p in ok]
        row[key], row[key + "_std"] = mean_std(values)
        row[key + "_values"], lower[key] = values, not higher
    if columns:
        row["harness_higher"] = columns
    if base:
        for key in [*COMPARED, *columns]:
            if row.get(key) is not None and base.get(key) is not None:
                row[key + "_vs_base"] = row[key] - base[key]
                row[key + "_p_vs_base"] = welch(row[key + "_values"], [base[key]])
                row[key + "_verdict_vs_base"] = verdict(row[key + "_values"], [base[key]], lower[key])
        if "forget_loss_vs_base" in row:
            row.update(_forgetting(row, base))
    return row


def harness_columns(base: dict | None, rows: list[dict]) -> dict:
    """{"harness/TASK/METRIC": higher is better} of the lm-eval scores the base and the rows hold, in order."""
    out: dict = {}
    for r in [base or {}, *rows]:
        for key, higher in (r.get("harness_higher") or {}).items():
            out.setdefault(key, higher)
    return out


def _forgetting(row: dict, base: dict) -> dict:
    """Forgetting per seed: the loss on the forgetting texts with the adapter minus the base's; its mean ± std,
    and Welch's test against the base (a one-sample t-test of the seeds' differences against 0)."""
    values = [v - base["forget_loss"] if v is not None else None for v in row["forget_loss_values"]]
    mean, std = mean_std(values)
    return {"forgetting": mean, "forgetting_std": std, "forgetting_values": values,
            "forgetting_p": welch(values, [0.0]), "forgetting_verdict": verdict(values, [0.0], True)}


def noise_summary(rows: list[dict]) -> dict:
    """Per compared figure: the best run, and the runs whose difference to it is within noise."""
    out = {}
    for key in COMPARED:
        ok = [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]
        if not ok:
            continue
        lower = dict(METRICS)[key]
        best = min(ok, key=lambda r: r[key] if lower else -r[key])
        tied = []
        for r in ok:
            if r is best:
                continue
            p = welch(r[key + "_values"], best[key + "_values"])
            r[key + "_p_vs_best"] = p
            if p is None or p >= 0.05:
                tied.append({"name": r["name"], "p": p})
        out[key] = {"best": best["name"], "within_noise_of_best": tied}
    return out
