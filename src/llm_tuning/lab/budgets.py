"""A comparison at several budgets: held-out loss against budget per run, and whether the order of the runs holds
between budgets. The order is compared three ways: Spearman's rank correlation of the seed means; the same
correlation when each run's figure is one seed drawn at random, set beside the correlation between two different
seeds at one budget (how well the seeds themselves agree on an order: the most a budget change could show); and
the pairs of runs whose order flips, beyond noise where Welch's test tells the two apart at both budgets."""

from __future__ import annotations

import os
import random

from . import page, plots
from .points import write_json
from .settings import budget_folder
from .stats import ALPHA, welch

KEY = "heldout_loss"  # the figure ranked: lower is better
DRAWS = 2000


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None for fewer than 3 values or no spread."""
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else None


def _quantiles(values: list[float]) -> dict | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    at = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"median": at(0.5), "p5": at(0.05), "p95": at(0.95)}


def _seed_draws(values: dict, other: dict | None, rng, distinct: bool) -> list[float | None]:
    """Spearman's rho of one seed per run from `values` against one from `other` (another budget), or, with
    other None, against another seed of the same budget (distinct: never the same seed twice)."""
    names = list(values)
    out = []
    for _ in range(DRAWS):
        xa, xb = [], []
        for n in names:
            if other is None and distinct:
                a, b = rng.sample(values[n], 2)
            else:
                a, b = rng.choice(values[n]), rng.choice(other[n])
            xa.append(a)
            xb.append(b)
        out.append(spearman(xa, xb))
    return out


def _flips(names, first: dict, second: dict) -> list[dict]:
    """Pairs ordered one way by their seed means at the first budget and the other way at the second."""
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d1, d2 = first[a][KEY] - first[b][KEY], second[a][KEY] - second[b][KEY]
            if d1 * d2 < 0:
                p1 = welch(first[a][KEY + "_values"], first[b][KEY + "_values"])
                p2 = welch(second[a][KEY + "_values"], second[b][KEY + "_values"])
                out.append({"runs": [a, b], "p_first": p1, "p_second": p2,
                            "beyond_noise": p1 is not None and p2 is not None and p1 < ALPHA and p2 < ALPHA})
    return out


def rank_agreement(rows_first: list[dict], rows_second: list[dict], seed: int = 0) -> dict:
    """How far the order of the runs by held-out loss at one budget holds at another (runs ok at both)."""
    first = {r["name"]: r for r in rows_first if r.get("status") == "ok" and r.get(KEY) is not None}
    second = {r["name"]: r for r in rows_second if r.get("status") == "ok" and r.get(KEY) is not None}
    names = [n for n in first if n in second]
    rng = random.Random(seed)
    va = {n: first[n][KEY + "_values"] for n in names}
    vb = {n: second[n][KEY + "_values"] for n in names}
    several = names and all(len(va[n]) > 1 for n in names)
    return {"runs": names, "pairs": len(names) * (len(names) - 1) // 2,
            "rho": spearman([first[n][KEY] for n in names], [second[n][KEY] for n in names]),
            "rho_one_seed_each": _quantiles(_seed_draws(va, vb, rng, False)) if names else None,
            "rho_seed_vs_seed_first": _quantiles(_seed_draws(va, None, rng, True)) if several else None,
            "flipped": _flips(names, first, second),
            "best": [min(names, key=lambda n: first[n][KEY]) if names else None,
                     min(names, key=lambda n: second[n][KEY]) if names else None]}


def _q(q) -> str:
    return "n/a" if not q else f"median {q['median']:.2f} (5-95 %: {q['p5']:.2f} to {q['p95']:.2f})"


def verdict_text(agree: dict, b1: float, b2: float) -> str:
    """The answer to "does the order of the methods hold at b2 x the budget?" in numbers."""
    n, rho = len(agree["runs"]), agree["rho"]
    if n < 3 or rho is None:
        return f"Fewer than 3 runs trained at both {b1:g}x and {b2:g}x: no order to compare."
    flips = agree["flipped"]
    beyond = [f for f in flips if f["beyond_noise"]]
    text = (f"**Does the order hold at {b2:g}x the budget of {b1:g}x?** Spearman's rank correlation of the {n} runs' "
            f"held-out losses (seed means): **{rho:.2f}**. With one seed drawn per run at each budget: "
            f"{_q(agree['rho_one_seed_each'])}; two different seeds at the same budget ({b1:g}x) agree to "
            f"{_q(agree['rho_seed_vs_seed_first'])}, the most the seeds' noise lets a change of budget show. "
            f"{len(flips)} of {agree['pairs']} pairs of runs change order")
    if flips:
        text += f", {len(beyond)} beyond noise (Welch p < {ALPHA} at both budgets)"
        if beyond:
            text += ": " + "; ".join(f"{f['runs'][0]} / {f['runs'][1]} (p {f['p_first']:.2g}, {f['p_second']:.2g})"
                                     for f in beyond)
    best = agree["best"]
    same = "the same run" if best[0] == best[1] else "another run"
    return text + f". Best at {b1:g}x: {best[0]}; at {b2:g}x: {best[1]} ({same})."


def _cell(r: dict | None, forgetting: bool) -> list[str]:
    if not r or r.get("status") != "ok" or r.get(KEY) is None:
        return ["failed" if r else "", ""] + [""] * forgetting + [""]
    std = r.get(KEY + "_std")
    d = r.get(KEY + "_vs_base")
    lr = "" if r.get("lr") is None else f"{r['lr']:.3g}" + (" (edge)" if r.get("bracketed") is False else "")
    f, fs = r.get("forgetting"), r.get("forgetting_std")
    forgot = ["" if f is None else f"{f:+.4f}" + (f" ± {fs:.4f}" if fs is not None else "")] if forgetting else []
    return [f"{r[KEY]:.4f}" + (f" ± {std:.4f}" if std is not None else ""), "" if d is None else f"{d:+.4f}",
            *forgot, lr]


def budget_table(done: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per run (the base first): held-out loss, its difference to the base, the forgetting (where the
    comparison measured it), the chosen rate and the rank at each budget."""
    budgets = [d["summary"]["budget"] for d in done]
    base = done[0]["base"]
    forgetting = base.get("forget_loss") is not None
    header = ["run", "method"]
    for b, d in zip(budgets, done):
        header += [f"held-out loss {b:g}x", f"Δ vs base {b:g}x"] + [f"forgetting {b:g}x"] * forgetting + \
            [f"lr {b:g}x", f"rank {b:g}x"]
    zero = ["+0.0000"] * (1 + forgetting)
    rows = [["base", "untouched model"] + sum(([f"{base[KEY]:.4f}", *zero, "", ""] for _ in done), [])] \
        if base.get("status") == "ok" else []
    by_budget = [{r["name"]: r for r in d["results"]} for d in done]
    rank_of = []
    for d in done:
        ok = [r for r in d["results"] if r.get("status") == "ok" and r.get(KEY) is not None]
        rank_of.append(dict(zip([r["name"] for r in ok], ranks([r[KEY] for r in ok]))))
    for run in done[0]["results"]:
        cells = [run["name"], run["method"]]
        for rows_of, rk in zip(by_budget, rank_of):
            cells += _cell(rows_of.get(run["name"]), forgetting) + [f"{rk[run['name']]:g}" if run["name"] in rk else ""]
        rows.append(cells)
    return header, rows


def write_budget_report(out: str, cc, done: list[dict]) -> dict:
    """report.md / report.html / compare.json across the budgets, and heldout_loss_vs_budget.png."""
    budgets = [d["summary"]["budget"] for d in done]
    agreements = [{"first": budgets[0], "second": b, **rank_agreement(done[0]["results"], d["results"])}
                  for b, d in zip(budgets[1:], done[1:])]
    plot_path = os.path.join(out, "heldout_loss_vs_budget.png")
    plots.plot_budgets(done, plot_path)
    steps = ", ".join(f"{b:g}x: {d['summary']['steps']} steps ([{budget_folder(b)}/report.md]"
                      f"({budget_folder(b)}/report.md))" for b, d in zip(budgets, done))
    s0 = done[0]["summary"]
    blocks = [("h1", s0["title"]),
              ("p", f"The comparison at {len(budgets)} budgets of training tokens, each a whole comparison of its own "
                    f"(sweep, bracketing, seeds {', '.join(map(str, s0['seeds']))}, held-out scores): {steps}. "
                    f"Every budget's sweep after the first is centred on the rate chosen at the budget before. "
                    f"Model `{s0['model']}`, data `{s0['data']}`, the same split and held-out records at every budget."),
              ("h2", "Does the order of the methods hold as the budget grows?")]
    blocks += [("p", verdict_text(a, a["first"], a["second"])) for a in agreements]
    blocks += [("h2", "Held-out loss at each budget (mean ± std over seeds; rank 1 = lowest loss)"
                      + ("; forgetting: the loss on the forgetting texts minus the base's" if
                         done[0]["base"].get("forget_loss") is not None else "")),
               ("table", (*budget_table(done), None)),
               ("img", ("Held-out loss against the training budget, the base model dashed", plot_path))]
    paths = {"md": os.path.join(out, "report.md"), "html": os.path.join(out, "report.html"), "plot": plot_path}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(page.markdown(blocks))
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page.html_page(blocks, s0["title"]))
    write_json(os.path.join(out, "compare.json"), {
        "title": s0["title"], "model": s0["model"], "data": s0["data"], "seeds": s0["seeds"],
        "budgets": [{"budget": b, "steps": d["summary"]["steps"], "folder": budget_folder(b)}
                    for b, d in zip(budgets, done)],
        "rank_agreement": agreements, "base": done[0]["base"],
        "runs": [{"name": r["name"], "method": r["method"], "by_budget": [
            {k: x.get(k) for k in ("lr", "bracketed", KEY, KEY + "_std", KEY + "_values", KEY + "_vs_base",
                                   "forgetting", "forgetting_std", "forgetting_values", "status")}
            for x in (next((y for y in d["results"] if y["name"] == r["name"]), {}) for d in done)]}
            for r in done[0]["results"]]})
    return paths
