"""The lab's report: report.md, a self-contained report.html (PNGs inlined), three PNGs and quantlab.json."""

from __future__ import annotations

import json
import os

from .. import page
from .weights import WEIGHT_SCHEMES

PNGS = {"weights": "weight_error_per_layer.png", "threshold": "product_error_vs_threshold.png",
        "outliers": "outlier_dims_per_layer.png"}


def to_json(res: dict) -> dict:
    """The --json document: per layer name, weight (scheme -> relative error), outlier_dims (threshold -> count),
    product (scheme -> relative error); loss (scheme -> held-out loss); 'demo' (the same on the demonstration
    inputs) only with --demo-outliers."""
    layers = [{"name": n, "weight": {s: e["rel"] for s, e in res["weights"][n].items()},
               "outlier_dims": {t: o["dims"] for t, o in a["outliers"].items()}, "product": dict(a["product"])}
              for n, a in res["activations"].items()]
    out = {"layers": layers, "loss": {s: v["loss"] for s, v in res["losses"].items()}}
    if res["setup"]["demo_outliers"]:
        out["demo"] = {"dims": res["setup"]["demo_outliers"], "scale": res["setup"]["demo_scale"],
                       "layers": [{"name": n, "outlier_dims": {t: o["dims"] for t, o in a["demo"]["outliers"].items()},
                                   "product": dict(a["demo"]["product"])} for n, a in res["activations"].items()]}
    return out


def mean_product(res: dict, demo: bool = False) -> dict:
    """{product scheme: mean relative error over the linear layers}."""
    acts = [a["demo"] if demo else a for a in res["activations"].values()]
    return {k: sum(a["product"][k] for a in acts) / len(acts) for k in acts[0]["product"]}


def _e(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    return name.replace("model.", "").replace("layers.", "L").replace("self_attn.", "").replace("mlp.", "")


def plot_weights(res, path):
    plt = _plt()
    names = [n for n in res["weights"] if n != "(all layers)"]
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(names)), 4.5))
    for s in WEIGHT_SCHEMES:
        ax.plot(range(len(names)), [res["weights"][n][s]["rel"] for n in names], marker="o", ms=3, label=s)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("||W - dequant(quant(W))|| / ||W||")
    ax.set_title("Weight quantisation error per linear layer")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_thresholds(res, path):
    plt = _plt()
    ts = res["setup"]["thresholds"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for demo, style in ((False, "-"), (True, "--")):
        if demo and not res["setup"]["demo_outliers"]:
            continue
        m = mean_product(res, demo)
        label = "demonstration outliers" if demo else "real inputs"
        ax.plot(ts, [m[f"llm_int8@{t:g}"] for t in ts], style, marker="o", label=f"LLM.int8, {label}")
        ax.axhline(m["int8_tensor"], ls=style, color="grey", lw=1, label=f"int8 per tensor, {label}")
    ax.set_xlabel("LLM.int8 threshold (0 = no decomposition: vector-wise int8)")
    ax.set_ylabel("mean relative error of X W^T over layers")
    ax.set_yscale("log")
    ax.set_title("Product error against the outlier threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_outliers(res, path):
    plt = _plt()
    names = list(res["activations"])
    ts = [t for t in res["setup"]["thresholds"] if t > 0]
    panels = [False, True] if res["setup"]["demo_outliers"] else [False]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.28 * len(names)), 3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(1, len(ts))
    for ax, demo in zip(axes[:, 0], panels):
        for i, t in enumerate(ts):
            vals = [(res["activations"][n]["demo"] if demo else res["activations"][n])["outliers"][f"{t:g}"]["dims"]
                    for n in names]
            ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"|x| >= {t:g}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], [_short(n) for n in names], rotation=90,
                      fontsize=7)
        ax.set_ylabel("feature dimensions")
        ax.set_title("Outlier feature dimensions per layer" + (" (DEMONSTRATION inputs)" if demo else ""))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _weights_table(res):
    header = ["layer", *WEIGHT_SCHEMES]
    rows = [[n, *(_e(res["weights"][n][s]["rel"]) for s in WEIGHT_SCHEMES)] for n in res["weights"]]
    rows.append(["max abs error, all layers", *(_e(res["weights"]["(all layers)"][s]["max_abs"])
                                                 for s in WEIGHT_SCHEMES)])
    return header, rows


def _activation_table(res, demo):
    ts = res["setup"]["thresholds"]
    pos = [t for t in ts if t > 0]
    keys = ["int8_tensor", "int8_vectorwise"] + [f"llm_int8@{t:g}" for t in pos]
    header = ["layer", "max abs x", *(f"dims (rows) >= {t:g}" for t in pos), *keys]
    rows = []
    for n, a in res["activations"].items():
        a = a["demo"] if demo else a
        counts = [a["outliers"][f"{t:g}"] for t in pos]
        rows.append([n, f"{a['max_abs']:.2f}", *(f"{c['dims']} ({c['rows']})" for c in counts),
                     *(_e(a["product"][k]) for k in keys)])
    m = mean_product(res, demo)
    rows.append(["mean over layers", "", *("" for _ in pos), *(_e(m[k]) for k in keys)])
    return header, rows


def _loss_table(res):
    fp32 = res["losses"]["fp32"]["loss"]
    header = ["model", "held-out loss", "perplexity", "loss - fp32"]
    rows = [[s, f"{v['loss']:.4f}", f"{v['perplexity']:.3f}", f"{v['loss'] - fp32:+.4f}"]
            for s, v in res["losses"].items()]
    return header, rows


def tables(res) -> list[tuple[str, str, list, list]]:
    """(title, note, header, rows) for each table of the report."""
    s = res["setup"]
    out = [("Weights: relative error per linear layer",
            "||W - dequant(quant(W))||_F / ||W||_F; the first rows are single layers, '(all layers)' all weights "
            "together. int8_tensor: one absmax scale per matrix; int8_row / int8_col: one per row (output "
            "feature) / column (input feature); int8_block: bitsandbytes' blockwise 8-bit (dynamic code, blocks "
            "of 64); nf4 / fp4: bitsandbytes' 4-bit, blocks of 64.", *_weights_table(res)),
           ("Activations: outliers and the product's relative error",
            f"Each linear layer's input X over {s['records']} records ({s['rows']} token rows per layer at most); "
            "error = ||X W^T - Y_q||_F / ||X W^T||_F with Y_q from: int8 per tensor; int8 vector-wise (rows of X x "
            "columns of W^T, LLM.int8 without decomposition = llm_int8@0); LLM.int8 at threshold T (dimensions "
            "with some |x| >= T multiplied in floating point). 'dims (rows)': feature dimensions with some |x| >= T "
            "and the token rows they occur in.", *_activation_table(res, False))]
    if s["demo_outliers"]:
        out.append((f"DEMONSTRATION: the same with {s['demo_outliers']} feature dimensions of every input scaled "
                    f"by {s['demo_scale']:g}",
                    "Not the model's own activations: a few hidden dimensions are multiplied the way the emergent "
                    "outlier features of large models are, to show the vector-wise error jump and LLM.int8 bring it "
                    "back.", *_activation_table(res, True)))
    out.append(("End to end: held-out response loss",
                f"{s['heldout_records']} records ({s['heldout_source']}), {s['tokens']} response tokens. fp32; "
                "llm_int8@T: load_model(quantization='8bit', int8_threshold=T); nf4: 4-bit NF4 with double "
                "quantisation (train's 4bit); fp4: the same with FP4; with an adapter: merged into the fp32 base "
                "then quantised (merged_then_Q) against the adapter on the quantised base (adapter_on_Q). "
                "transformers keeps the output layer (lm_head) in full precision in all of them; the tables above "
                "include it.",
                *_loss_table(res)))
    return out


def write_report(out_dir: str, res: dict) -> dict:
    """Writes report.md, report.html, the PNGs and quantlab.json into `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, v) for k, v in PNGS.items()}
    plot_weights(res, paths["weights"])
    plot_thresholds(res, paths["threshold"])
    plot_outliers(res, paths["outliers"])
    s = res["setup"]
    title = f"Quantisation lab: {s['model']}"
    intro = (f"Model `{s['model']}`" + (f", adapter `{s['adapter']}`" if s["adapter"] else "") +
             f"; data `{s['data']}`; thresholds {', '.join(f'{t:g}' for t in s['thresholds'])}; bitsandbytes "
             f"{s['bitsandbytes']}, torch {s['torch']}; {s['seconds']:.0f} s.")
    blocks = [("h1", title), ("p", intro)]
    for name, note, header, rows in tables(res):
        blocks += [("h2", name), ("p", note), ("table", ([str(c) for c in header], rows, None))]
    blocks += [("h2", "Plots")] + [("img", (k, p)) for k, p in paths.items()]
    paths["md"], paths["html"], paths["json"] = (os.path.join(out_dir, n) for n in
                                                 ("report.md", "report.html", "quantlab.json"))
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(page.markdown(blocks))
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page.html_page(blocks, title))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(to_json(res), f, indent=1)
    return paths
