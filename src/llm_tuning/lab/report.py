"""The comparison report: the base row and every run's mean ± std over seeds with its difference to the base,
the costs, which differences are within noise, the learning-rate sweep, the time each part took, the plots and
sample answers; written as Markdown and as a self-contained HTML page (plots embedded) from the same blocks."""

from __future__ import annotations

import os
from functools import partial

from . import page, plots
from .stats import ALPHA


def _int(v):
    return "" if v is None else f"{v:,}"


def _num(v, digits):
    return "" if v is None else f"{v:,.{digits}f}"


def _ms(r, key, digits):
    """mean ± std (the std left out with one seed)."""
    m, s = r.get(key), r.get(key + "_std")
    if m is None:
        return ""
    return f"{m:,.{digits}f}" + (f" ± {s:,.{digits}f}" if s is not None else "")


def _delta(r, key, digits):
    d = r.get(key + "_vs_base")
    if d is None:
        return ""
    return f"{0.0 if abs(d) < 0.5 * 10 ** -digits else d:+.{digits}f}"  # no "-0.00"


def _verdict(r, key):
    v, p = r.get(key + "_verdict_vs_base"), r.get(key + "_p_vs_base")
    return "" if v is None else v + (f" (p={p:.3g})" if p is not None else "")


def _forgetting(r):
    """The loss on the forgetting texts minus the base's, mean ± std over seeds, signed (+: forgets)."""
    m, s = r.get("forgetting"), r.get("forgetting_std")
    if m is None:
        return ""
    return f"{0.0 if abs(m) < 5e-5 else m:+.4f}" + (f" ± {s:.4f}" if s is not None else "")


FORGETTING_WORDS = {"worse": "forgets", "better": "improves", "within noise": "within noise", "n/a": "n/a"}


def _forgetting_verdict(r):
    """Whether the run's loss on the forgetting texts is above the base's ("forgets"), below it ("improves") or
    within noise of it, with the p-value."""
    v, p = r.get("forgetting_verdict"), r.get("forgetting_p")
    return "" if v is None else FORGETTING_WORDS[v] + (f" (p={p:.3g})" if p is not None else "")


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


def _status(r):
    if r["status"] != "ok":
        return f"failed: {r.get('error', '')}"
    return "ok" if not r.get("error") else f"ok ({r['error']})"


def _merged_ratio(r) -> str:
    """The merged model's generation speed as a ratio to the base's; n/a where the adapter was not merged (a
    method that cannot merge, or a model that cannot hold it merged)."""
    if r.get("gen_speed_ratio_merged") is not None:
        return _ms(r, "gen_speed_ratio_merged", 2)
    return "n/a" if r.get("gen_speed_ratio") is not None else ""


def _lr(r) -> str:
    """The chosen rate; "(edge)" where the sweep's best is still its lowest or highest rate (not bracketed)."""
    if r.get("lr") is None:
        return ""
    return f"{r['lr']:.3g}" + (" (edge)" if r.get("bracketed") is False else "")


QUALITY = [
    ("run", lambda r: r["name"]),
    ("method", lambda r: r["method"]),
    ("status", _status),
    ("lr", lambda r: _lr(r)),
    ("seeds", lambda r: ",".join(str(s) for s in r.get("seeds") or [])),
    ("final train loss", lambda r: _ms(r, "final_train_loss", 4)),
    ("validation loss", lambda r: _ms(r, "val_loss", 4)),
    ("held-out loss", lambda r: _ms(r, "heldout_loss", 4)),
    ("Δ loss vs base", lambda r: _delta(r, "heldout_loss", 4)),
    ("loss vs base", lambda r: _verdict(r, "heldout_loss")),
    ("forgetting", _forgetting),
    ("forgetting vs base", _forgetting_verdict),
    ("ROUGE-L", lambda r: _ms(r, "rouge_l", 2)),
    ("Δ ROUGE-L", lambda r: _delta(r, "rouge_l", 2)),
    ("BLEU-4", lambda r: _ms(r, "bleu_4", 2)),
    ("Δ BLEU-4", lambda r: _delta(r, "bleu_4", 2)),
]
ANSWERS = [
    ("run", lambda r: r["name"]),
    ("method", lambda r: r["method"]),
    ("held-out loss", lambda r: _ms(r, "heldout_loss", 4)),
    ("ROUGE-L", lambda r: _ms(r, "rouge_l", 2)),
    ("answer tokens", lambda r: _ms(r, "answer_tokens", 1)),
    ("% at the token limit", lambda r: _ms(r, "answers_at_limit", 0)),
    ("% empty", lambda r: _ms(r, "answers_empty", 0)),
    ("% repeated trigrams", lambda r: _ms(r, "repeated_trigrams", 1)),
]
COST = [
    ("run", lambda r: r["name"]),
    ("method", lambda r: r["method"]),
    ("trainable params", lambda r: _int(r.get("trainable_params"))),
    ("trainable %", _pct),
    ("adapter size", lambda r: _size(r.get("adapter_bytes"))),
    ("training memory MiB (measured)", lambda r: _num(r.get("peak_rss_mib"), 0)),
    ("training memory MiB (estimated)", lambda r: _num(r.get("estimated_mib"), 0)),
    ("train tokens/s", lambda r: _ms(r, "tokens_per_s", 0)),
    ("wall s", lambda r: _num(r.get("wall_s"), 1)),
    ("mergeable", lambda r: "" if "mergeable" not in r else ("yes" if r["mergeable"] else "no")),
    ("generation tokens/s", lambda r: _ms(r, "gen_tokens_per_s", 0)),
    ("generation × base (unmerged)", lambda r: _ms(r, "gen_speed_ratio", 2)),
    ("generation × base (merged)", lambda r: _merged_ratio(r)),
]


def _base_row(base):
    if not base or base.get("status") != "ok":
        return {"name": "base", "method": "untouched model", "status": "failed",
                "error": (base or {}).get("error", "not evaluated")}
    forgetting = {"forgetting": 0.0} if base.get("forget_loss") is not None else {}
    return {**base, "method": "untouched model", "heldout_loss_vs_base": 0.0, "rouge_l_vs_base": 0.0,
            "bleu_4_vs_base": 0.0, **forgetting}


def quality_columns(base) -> list:
    """QUALITY, without the forgetting columns where the comparison measured none."""
    if base and base.get("forget_loss") is not None:
        return QUALITY
    return [c for c in QUALITY if not c[0].startswith("forgetting")]


def harness_label(key: str) -> str:
    """"harness/TASK/METRIC" as a column name: "TASK METRIC"."""
    return " ".join(key.split("/", 2)[1:])


def harness_table(summary, base, rows):
    """lm-eval's scores: per task and metric the mean ± std over seeds, the difference to the base and whether it
    is within noise (the base model's row first); None when the comparison runs no harness task."""
    columns = summary.get("harness_columns") or {}
    if not columns:
        return None
    header = ["run", "method"]
    for key, higher in columns.items():
        header += [f"{harness_label(key)} {'↑' if higher else '↓'}", "Δ vs base", "vs base"]
    table = []
    for r in [_base_row(base)] + rows:
        cells = [r["name"], r["method"]]
        for key in columns:
            base_row = r["name"] == "base" and r.get(key) is not None
            cells += [_ms(r, key, 4), "+0.0000" if base_row else _delta(r, key, 4), _verdict(r, key)]
        table.append(cells)
    return header, table, [_base_row(base)] + rows


def harness_text(summary) -> str:
    return (f"lm-eval (EleutherAI's lm-evaluation-harness) tasks {', '.join(summary['harness_tasks'])} on every "
            "seed of each run at its chosen rate and on the base model, through lm-eval's `hf` backend over the "
            "loaded model with its adapter (generation by the project's decoding loop). ↑: higher is better, ↓: lower. "
            "Each point's full results are in its folder's harness_results.json.")


def quality_rows(base, rows):
    return [[fn(r) for _, fn in quality_columns(base)] for r in [_base_row(base)] + rows]


def answer_rows(base, rows):
    return [[fn(r) for _, fn in ANSWERS] for r in [_base_row(base)] + rows]


def _rho_text(rows, key) -> str:
    from .budgets import spearman

    ok = [r for r in rows if r.get("rouge_l") is not None and r.get(key) is not None]
    rho = spearman([r["rouge_l"] for r in ok], [r[key] for r in ok])
    return "n/a" if rho is None else f"{rho:+.2f}"


def answers_text(summary, base, rows) -> str:
    """Why greedy ROUGE can fall while the loss improves, from this comparison's own figures."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("rouge_l") is not None and r.get("heldout_loss")]
    if not ok or not base or base.get("status") != "ok" or base.get("answer_tokens") is None:
        return ""
    worse = [r["name"] for r in ok if r["heldout_loss"] < base["heldout_loss"] and r["rouge_l"] < base["rouge_l"]]
    text = (f"ROUGE-L scores {summary['eval_records']} greedy answers of at most {summary['max_new_tokens']} new "
            f"tokens against the references; the loss scores every reference token. Across the {len(ok)} runs, "
            f"ROUGE-L's rank correlation with the held-out loss is {_rho_text(ok, 'heldout_loss')} (negative: lower "
            f"loss, higher ROUGE), with the answers' length {_rho_text(ok, 'answer_tokens')}, with the share of "
            f"repeated trigrams {_rho_text(ok, 'repeated_trigrams')}. The base model answers "
            f"{base['answer_tokens']:.1f} tokens on average ({base['answers_at_limit']:.0f} % run to the limit, "
            f"{base['repeated_trigrams']:.1f} % repeated trigrams).")
    if worse:
        text += (f" {len(worse)} run(s) lower the loss but score below the base's ROUGE-L: {', '.join(worse)}; "
                 f"compare their answer length, empty answers and loops in the table with the base's.")
    return text


def cost_rows(rows):
    return [[fn(r) for _, fn in COST] for r in rows]


def cost_text(summary, base) -> str:
    """How the inference cost is measured, and which runs are on the Pareto fronts."""
    from .inference_cost import NEW_TOKENS, PROMPTS, REPEATS
    from .pareto import COSTS

    text = ""
    if base and base.get("gen_tokens_per_s") is not None:
        text = (f"Generation: new tokens per second answering the prompts of the first {PROMPTS} held-out records "
                f"in one batch, greedy, {NEW_TOKENS} new tokens each (no end of answer), the best of {REPEATS} rounds "
                f"after a warm-up, with the adapter as trained (unmerged) and folded into the base (merged, where "
                f"the method merges), each as a ratio to the base model timed in the same rounds of the same process "
                f"(the base alone: {base['gen_tokens_per_s']:,.0f} tokens/s; the ratio is the figure to compare, "
                f"the tokens/s move with the machine's load). ")
    names = {"peak_rss_mib": "training memory", "trainable_params": "trainable parameters",
             "tokens_per_s": "training tokens/s"}
    for quality, label in (("heldout_loss", "held-out loss"), ("forgetting", "forgetting")):
        fronts = (summary.get("pareto") or {}).get(quality)
        if fronts and any(fronts.values()):
            text += (f"Pareto front of {label} (runs no other beats on both axes) against " + "; ".join(
                f"{names[c]}: {', '.join(fronts[c]) or 'none'}" for c, *_ in COSTS) + ". ")
    return text.strip()


def _p(p):
    return "no spread" if p is None else f"p={p:.3g}"


def noise_text(summary, rows) -> list[str]:
    n = len(summary["seeds"])
    out = [f"Differences are tested with Welch's two-sided t-test over the {n} seeds of each run (against the base "
           f"model, which is deterministic, a one-sample t-test against its value); p ≥ {ALPHA} is called *within "
           f"noise*. With {n} seeds only large, consistent differences are told apart."]
    if n < 2:
        out.append("With one seed there is no spread to test: no difference can be called within noise or not.")
    names = {"heldout_loss": "Held-out loss", "forget_loss": "Forgetting (loss on the forgetting texts)",
             "rouge_l": "ROUGE-L", "bleu_4": "BLEU-4"}
    for key, info in summary["noise"].items():
        tied = ", ".join(f"{t['name']} ({_p(t['p'])})" for t in info["within_noise_of_best"]) or "none"
        same = [r["name"] for r in rows if r.get(key + "_verdict_vs_base") == "within noise"]
        out.append(f"{names[key]}: best **{info['best']}**; within noise of it: {tied}. Within noise of the base "
                   f"model: {', '.join(same) or 'none'}.")
    return out


def _bracketing(rows, summary) -> str:
    """Whether every swept run's best rate has a worse (or diverged) neighbour on each side."""
    swept = [r for r in rows if r.get("sweep") and r.get("lr") is not None]
    edge = [r["name"] for r in swept if r.get("bracketed") is False]
    extend = summary.get("lr_extend")
    if not edge:
        return (f"Every swept run's chosen rate has a worse or diverged rate on each side (sweeps extended past an "
                f"edge up to {extend} times, x3 a step).")
    return (f"{len(edge)} of {len(swept)} swept runs still chose the lowest or highest rate tried after up to "
            f"{extend} extensions (x3 a step), marked (edge): {', '.join(edge)}. Their optimum is not bracketed: a "
            f"verdict about them may be the sweep's, not the method's.")


def sweep_rows(rows):
    out = []
    for r in rows:
        if not r.get("sweep"):
            continue
        cells = [f"{s['lr']:.3g}: " + (f"{s['val_mean']:.4f}" + (f" ± {s['val_std']:.4f}" if s["val_std"] else "")
                                        if s["eligible"] else "failed") for s in r["sweep"]]
        out.append([r["name"], r["method"], "; ".join(cells), _lr(r),
                    ",".join(str(s) for s in r["sweep"][0]["seeds"])])
    return out


def _decoding(summary) -> str:
    guards = [f"repetition penalty {summary['repetition_penalty']:g}" if summary.get("repetition_penalty", 1) != 1
              else "", f"no repeated {summary['no_repeat_ngram_size']}-grams" if summary.get("no_repeat_ngram_size")
              else ""]
    guards = [g for g in guards if g] or ["no loop guard"]
    return f"at most {summary.get('max_new_tokens', '?')} new tokens, " + ", ".join(guards)


def _setup(summary) -> str:
    return (f"Model `{summary['model']}`; data `{summary['data']}`, split once (seed {summary['split_seed']}) into "
            f"{summary['train_records']} training, {summary['val_records']} validation and "
            f"{summary['heldout_records']} held-out records. Every run: {summary['steps']} steps of batch "
            f"{summary['batch_size']} on the same training records, repeated for seeds "
            f"{', '.join(map(str, summary['seeds']))}. The learning rate is chosen on the validation records "
            f"(least mean validation loss after training; the validation loss is also measured every "
            f"{summary['eval_every']} steps); the table reports the held-out records, which choose nothing: "
            f"held-out loss on all of them, ROUGE-L / BLEU-4 of greedy answers to the first "
            f"{summary['eval_records']} ({_decoding(summary)}). "
            + (f"Forgetting: with the run's adapter, the loss over every token of {summary['forgetting']}, minus "
               f"the base model's (positive: the run forgot some of what the base predicted). "
               if summary.get("forgetting") else "")
            + f"Figures are mean ± standard deviation over the seeds at the chosen rate. "
            f"Training memory: peak RSS above the process's RSS just before the model was loaded (measured on the "
            f"first point of each training process: the points of a run train one after another in one process), and "
            f"`llm-tuning estimate` from the config alone (estimated).")


def _blocks(summary, base, rows, images):
    """The report as (kind, content) blocks: h1/h2/p/table/img/samples."""
    t = summary["timings"]
    b = [("h1", summary["title"]), ("p", _setup(summary)),
         ("h2", "Quality (mean ± std over seeds; the base model first)"),
         ("table", ([c for c, _ in quality_columns(base)], quality_rows(base, rows), [_base_row(base)] + rows)),
         *_harness_blocks(summary, base, rows),
         ("h2", "Answers: what the scored generations are like (mean ± std over seeds)"),
         ("table", ([c for c, _ in ANSWERS], answer_rows(base, rows), [_base_row(base)] + rows)),
         ("p", answers_text(summary, base, rows)),
         ("h2", "Cost"), ("table", ([c for c, _ in COST], cost_rows(rows), rows)), ("p", cost_text(summary, base)),
         ("h2", "Which differences are within noise")] + [("p", line) for line in noise_text(summary, rows)]
    sweeps = sweep_rows(rows)
    if sweeps:
        b += [("h2", "Learning-rate sweep (validation loss, mean ± std over the sweep seeds)"),
              ("table", (["run", "method", "validation loss per rate", "chosen", "sweep seeds"], sweeps, None)),
              ("p", _bracketing(rows, summary))]
    b += [("h2", "Time"), ("p", "Seconds per part; training and evaluation summed over the points' own records "
                                 "(a resumed comparison counts the work of earlier invocations too; with parallel > 1 "
                                 "they add up to more than the wall time)."),
          ("table", (["part", "seconds"], [[k, f"{v:,.1f}"] for k, v in t.items()], None)),
          ("h2", "Plots")] + [("img", (alt, path)) for alt, path in images]
    if summary["samples"]:
        b.append(("samples", _samples(summary, base, rows)))
    return b


def _harness_blocks(summary, base, rows) -> list:
    table = harness_table(summary, base, rows)
    if table is None:
        return []
    return [("h2", "Benchmarks (lm-eval; mean ± std over seeds; the base model first)"), ("table", table),
            ("p", harness_text(summary))]


def _samples(summary, base, rows):
    """[(instruction, reference, [(run, prediction)])] for the first few held-out records (the first seed's)."""
    out = []
    for i, rec in enumerate(summary["heldout"][: summary["samples"]]):
        preds = [(r["name"], r["samples"][i]) for r in [base or {}] + rows if r.get("samples") and i < len(r["samples"])]
        if summary.get("quote_records", True):
            out.append((rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else ""), rec["output"], preds))
        else:  # the data's licence forbids quoting it: the answers alone
            out.append((f"held-out record {i + 1} (not quoted: quote_records is false)", None, preds))
    return out


def write_report(out_dir, summary, base, rows) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"loss_curves": os.path.join(out_dir, "loss_curves.png"),
             "bars": os.path.join(out_dir, "heldout_loss_vs_params.png"),
             "scores": os.path.join(out_dir, "scores.png")}
    plots.plot_curves(rows, base, paths["loss_curves"])
    plots.plot_heldout(rows, base, paths["bars"])
    plots.plot_scores(rows, base, paths["scores"])
    images = [("Held-out loss by run, the base model dashed", paths["bars"]),
              ("ROUGE-L and BLEU-4 by run, the base model dashed", paths["scores"]),
              ("Training loss and validation loss during training", paths["loss_curves"])]
    optional = (("forgetting", plots.plot_forgetting, 1,
                 "Forgetting by run: the loss on the forgetting texts minus the base's"),
                ("pareto_heldout_loss", plots.plot_pareto, 0,
                 "Held-out loss against training memory, trainable parameters and training speed: the runs of the "
                 "Pareto front joined, the base model dashed"),
                ("pareto_forgetting", partial(plots.plot_pareto, quality="forgetting"), 1,
                 "Forgetting against the same costs: the runs of the Pareto front joined, the base (0) dashed"),
                ("lr_sweep", plots.plot_lr_sweep, 0, "Validation loss against learning rate"))
    for key, plot, at, caption in optional:  # drawn where the comparison has them; a stale one removed
        paths[key] = os.path.join(out_dir, f"{key}.png")
        if plot(rows, base, paths[key]):
            images.insert(at, (caption, paths[key]))
        elif os.path.exists(paths.pop(key)):
            os.remove(os.path.join(out_dir, f"{key}.png"))
    blocks = _blocks(summary, base, rows, images)
    paths["md"], paths["html"] = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(page.markdown(blocks))
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page.html_page(blocks, summary["title"]))
    return paths
