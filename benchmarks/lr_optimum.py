"""Where each run's best learning rate lies, from a finished comparison's sweep (docs/findings.md).

    .venv/bin/python benchmarks/lr_optimum.py examples/findings/lora_rank [--json FILE]

A sweep's grid is coarse (a factor of 2 or 3 between rates), so the rate it chose says the optimum to within a grid
step. Here each seed's validation losses are fitted, in log(rate), by a parabola through the seed's lowest point
and its two neighbours; its vertex is that seed's optimum (the grid point itself where the lowest is at an edge or
the parabola opens downwards). The table gives the chosen rate, the optimum of the seeds' mean curve, and the
seeds' optima (geometric mean and the factor of their spread, exp of the std of their logs).
"""

import argparse
import glob
import json
import math
import os


def vertex(rates: list[float], losses: list[float]) -> float:
    """The rate at the vertex of the parabola through the lowest loss and its neighbours, in log(rate)."""
    i = min(range(len(losses)), key=losses.__getitem__)
    if i in (0, len(losses) - 1):
        return rates[i]
    x = [math.log(r) for r in rates[i - 1:i + 2]]
    y = losses[i - 1:i + 2]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
    b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
    if a <= 0:
        return rates[i]
    return math.exp(min(max(-b / (2 * a), x[0]), x[2]))


def finite(v) -> bool:
    return v is not None and math.isfinite(v)


def optimum(row: dict) -> dict:
    """The run's chosen rate, the optimum of the mean curve and of each seed's curve."""
    sweep = sorted((s for s in row.get("sweep", []) if s.get("eligible", True)), key=lambda s: s["lr"])
    if len(sweep) < 2:
        return {"name": row["name"], "chosen": row.get("lr"), "mean_curve": None, "seeds": {}}
    rates = [s["lr"] for s in sweep]
    means = [s["val_mean"] for s in sweep]
    seeds = {}
    for seed in sweep[0]["seeds"]:
        losses = [s["val_losses"][s["seeds"].index(seed)] if seed in s["seeds"] else None for s in sweep]
        if all(finite(v) for v in losses):
            seeds[seed] = vertex(rates, losses)
    return {"name": row["name"], "chosen": row.get("lr"), "bracketed": row.get("bracketed"), "rates": rates,
            "mean_curve": vertex(rates, means), "seeds": seeds}


def spread(values: list[float]) -> tuple[float, float]:
    """Geometric mean and the factor exp(std of the logs) (1 for a single value)."""
    logs = [math.log(v) for v in values]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1)) if len(logs) > 1 else 0.0
    return math.exp(mean), math.exp(std)


def rows_of(folder: str) -> list[dict]:
    """Every run's result.json of a comparison folder (one budget's, or each budget's in budget-Nx/)."""
    paths = sorted(glob.glob(os.path.join(folder, "*", "result.json")))
    paths += sorted(glob.glob(os.path.join(folder, "budget-*", "*", "result.json")))
    rows = []
    for path in paths:
        row = json.load(open(path))
        if "sweep" in row:
            row["folder"] = os.path.relpath(os.path.dirname(os.path.dirname(path)), folder)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", help="a comparison's output folder")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    out = []
    print("| run | rates swept | chosen | optimum of the mean curve | seeds' optima | geometric mean (x spread) |")
    print("|---|---|---|---|---|---|")
    for row in rows_of(args.folder):
        o = optimum(row)
        o["folder"] = row["folder"]
        name = o["name"] if row["folder"] == "." else f"{row['folder']}/{o['name']}"
        if not o["seeds"]:
            print(f"| {name} | | {o['chosen']:g} | | | |")
            continue
        gm, factor = spread(list(o["seeds"].values()))
        o.update(geometric_mean=gm, spread=factor)
        edge = "" if o.get("bracketed", True) else " (edge)"
        print(f"| {name} | {o['rates'][0]:.3g} to {o['rates'][-1]:.3g} ({len(o['rates'])}) | {o['chosen']:.3g}{edge} | "
              f"{o['mean_curve']:.3g} | {', '.join(f'{v:.3g}' for v in o['seeds'].values())} | {gm:.3g} (x{factor:.2f}) |")
        out.append(o)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
