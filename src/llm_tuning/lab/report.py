"""The comparison report: one table, a loss-curve plot, a bar chart, sample generations; Markdown and a
self-contained HTML page (plots embedded), written from the per-run results of `compare`."""

from __future__ import annotations

import base64
import html
import os

COLUMNS = [
    ("run", lambda r: r["name"]),
    ("method", lambda r: r["method"]),
    ("status", lambda r: r["status"] if r["status"] == "ok" else f"failed: {r.get('error', '')}"),
    ("trainable params", lambda r: _int(r.get("trainable_params"))),
    ("trainable %", lambda r: _pct(r)),
    ("adapter size", lambda r: _size(r.get("adapter_bytes"))),
    ("training memory MiB (measured)", lambda r: _num(r.get("peak_rss_mib"), 0)),
    ("training memory MiB (estimated)", lambda r: _num(r.get("estimated_mib"), 0)),
    ("train tokens/s", lambda r: _num(r.get("tokens_per_s"), 0)),
    ("wall s", lambda r: _num(r.get("wall_s"), 1)),
    ("final train loss", lambda r: _num(r.get("final_train_loss"), 4)),
    ("held-out loss", lambda r: _num(r.get("heldout_loss"), 4)),
    ("ROUGE-L", lambda r: _num(r.get("rouge_l"), 2)),
    ("BLEU-4", lambda r: _num(r.get("bleu_4"), 2)),
    ("mergeable", lambda r: "" if "mergeable" not in r else ("yes" if r["mergeable"] else "no")),
]


def _int(v):
    return "" if v is None else f"{v:,}"


def _num(v, digits):
    return "" if v is None else f"{v:,.{digits}f}"


def _pct(r):
    if r.get("trainable_params") is None or not r.get("total_params"):
        return ""
    return f"{100 * r['trainable_params'] / r['total_params']:.4f}"


def _size(n):
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def table_rows(results):
    return [[fn(r) for _, fn in COLUMNS] for r in results]


def plot_loss_curves(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: a comparison often has more than 10 runs
    for i, r in enumerate(r for r in results if r.get("loss_curve")):
        steps, losses = zip(*r["loss_curve"])
        ax.plot(steps, losses, label=r["name"], linewidth=1.4, color=colors[i % len(colors)])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (response tokens)")
    ax.set_title("Training loss by method (same data, order and budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_loss_vs_params(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in results if r.get("heldout_loss") is not None), key=lambda r: r["trainable_params"])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    bars = ax.bar(range(len(ok)), [r["heldout_loss"] for r in ok], color="#4c78a8")
    ax.set_xticks(range(len(ok)), [f"{r['name']}\n{r['trainable_params']:,} params" for r in ok], fontsize=7,
                  rotation=0)
    for b, r in zip(bars, ok):
        ax.annotate(f"{r['heldout_loss']:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8)
    if ok:
        lo = min(r["heldout_loss"] for r in ok)
        ax.set_ylim(max(0, lo - 0.5), max(r["heldout_loss"] for r in ok) + 0.2)
    ax.set_ylabel("held-out loss")
    ax.set_title("Held-out loss vs trainable parameters (sorted by parameters)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _samples(summary, results):
    """[(instruction, reference, [(run, prediction)])] for the first few held-out records."""
    out = []
    for i, rec in enumerate(summary["heldout"][: summary["samples"]]):
        preds = [(r["name"], r["samples"][i]) for r in results if r.get("samples") and i < len(r["samples"])]
        out.append((rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else ""), rec["output"], preds))
    return out


def _md_cell(v):
    return str(v).replace("|", "\\|").replace("\n", " ")


def write_report(out_dir, summary, results) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    curves, bars = os.path.join(out_dir, "loss_curves.png"), os.path.join(out_dir, "heldout_loss_vs_params.png")
    plot_loss_curves(results, curves)
    plot_loss_vs_params(results, bars)
    header = [c for c, _ in COLUMNS]
    rows = table_rows(results)
    setup = (f"Training memory: peak RSS above the process's RSS just before the model was loaded (measured), and "
             f"`llm-tuning estimate` from the config alone (estimated). Model `{summary['model']}`; data `{summary['data']}` ({summary['train_records']} training, "
             f"{summary['heldout_records']} held-out records); every run: {summary['steps']} steps of batch "
             f"{summary['batch_size']}, seed {summary['seed']}, same records in the same order. Held-out loss on all "
             f"held-out records; ROUGE-L/BLEU-4 of greedy answers on the first {summary['eval_records']}.")

    md = [f"# {summary['title']}", "", setup, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    md += ["", "![loss curves](loss_curves.png)", "", "![held-out loss vs trainable parameters](heldout_loss_vs_params.png)", ""]
    if summary["samples"]:
        md += ["## Sample generations", ""]
    for instr, ref, preds in _samples(summary, results):
        md += [f"**Instruction:** {_md_cell(instr)}", "", f"- *reference*: {_md_cell(ref)}"]
        md += [f"- **{name}**: {_md_cell(p) or '(empty)'}" for name, p in preds]
        md.append("")
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")

    def img(path):
        with open(path, "rb") as f:
            return f'<img src="data:image/png;base64,{base64.b64encode(f.read()).decode()}" style="max-width:100%">'

    e = html.escape
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>" + e(summary["title"]) + "</title>",
         "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+3),th{text-align:left}"
         ".failed{background:#fde0e0}</style></head><body>",
         f"<h1>{e(summary['title'])}</h1><p>{e(setup)}</p><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"]
    for r, row in zip(results, rows):
        cls = " class='failed'" if r["status"] != "ok" else ""
        h.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
    h += ["</table>", "<h2>Loss curves</h2>", img(curves), "<h2>Held-out loss vs trainable parameters</h2>", img(bars)]
    if summary["samples"]:
        h.append("<h2>Sample generations</h2>")
    for instr, ref, preds in _samples(summary, results):
        h.append(f"<h3>{e(instr)}</h3><ul><li><i>reference</i>: {e(ref)}</li>"
                 + "".join(f"<li><b>{e(n)}</b>: {e(p) or '(empty)'}</li>" for n, p in preds) + "</ul>")
    h.append("</body></html>")
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write("\n".join(h))
    return {"md": md_path, "html": html_path, "loss_curves": curves, "bars": bars}
