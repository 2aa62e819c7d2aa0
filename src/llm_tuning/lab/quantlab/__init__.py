"""The quantisation lab (`llm-tuning quantlab`): what 8-bit and 4-bit bases do to a model, measured on it.

weights.py     per-layer weight errors for int8 per tensor / row / column / block, NF4, FP4 (bitsandbytes)
activations.py each linear layer's input on real records: outliers, the product's error for int8 per tensor,
               vector-wise int8 and LLM.int8 at each threshold (plus a labelled demonstration switch)
endtoend.py    held-out loss in fp32, LLM.int8 at each threshold, NF4, FP4; merged-then-quantised vs adapter on
               the quantised base
report.py      report.md, report.html, PNGs, quantlab.json
"""

from __future__ import annotations

import time

from ...errors import UserError


def parse_thresholds(values) -> list[float]:
    out = []
    for v in values or []:
        try:
            t = float(v)
        except (TypeError, ValueError):
            raise UserError(f"--thresholds: {v!r} is not a number; give e.g. 0,3,6,8") from None
        if t < 0:
            raise UserError(f"--thresholds: {v} is negative; thresholds are |activation| levels (0 = none)")
        out.append(t)
    if not out:
        raise UserError("--thresholds: give at least one, e.g. 0,3,6,8")
    return sorted(set(out))


def _check(cfg):
    from ...models.load import check_source

    for name, value, low in (("--records", cfg.records, 1), ("--max-rows", cfg.max_rows, 1),
                             ("--demo-outliers", cfg.demo_outliers, 0)):
        if value < low:
            raise UserError(f"{name} {value}: must be at least {low}")
    if cfg.demo_scale <= 0:
        raise UserError(f"--demo-scale {cfg.demo_scale}: must be positive")
    check_source(cfg.model, "model")
    if cfg.adapter:
        from .endtoend import check_adapter

        check_adapter(cfg.adapter)


def heldout_records(cfg, records, info) -> tuple[list, str]:
    """The records to measure on: an adapter trained on this same data keeps its own validation split (its
    val_size and seed), so its loss is held out; otherwise the first --records records."""
    from ...data.formats import split_records

    tc = info.get("config", {})
    if cfg.adapter and tc.get("data") == cfg.data and tc.get("val_size"):
        _, val = split_records(records, tc["val_size"], tc.get("seed", 42))
        return val[: cfg.records], f"the adapter's validation split of --data (val_size {tc['val_size']:g})"
    return records[: cfg.records], f"the first {min(cfg.records, len(records))} of --data"


def run_quantlab(cfg, log=print) -> dict:
    """Measure, write the report into cfg.output_dir, return {'setup', 'weights', 'activations', 'losses',
    'json', 'paths'}."""
    start = time.time()
    thresholds = parse_thresholds(cfg.thresholds)
    _check(cfg)
    from ...data.formats import load_records
    from ...data.tokenize import prepare_tokenizer
    from ...infer.load import run_info
    from ...models.load import load_model, load_tokenizer
    from .activations import activation_report, collect_inputs
    from .endtoend import adapter_losses, base_losses
    from .report import to_json, write_report
    from .weights import weight_errors

    info = run_info(cfg.adapter)
    records, source = heldout_records(cfg, load_records(cfg.data, cfg.skip_bad_records, cfg.encoding).records, info)
    template = cfg.template or info.get("template") or "default"
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.trust_remote_code), log=lambda m: None)
    model = load_model(cfg.model, "fp32", cfg.trust_remote_code)
    weights = weight_errors(model)
    log(f"weights: {len(weights) - 1} linear layers")
    inputs = collect_inputs(model, tokenizer, records, template, cfg.max_length, cfg.max_rows)
    log(f"activations: {len(records)} records, up to {max(len(x) for x in inputs.values())} token rows per layer"
        + (f"; DEMONSTRATION outliers: {cfg.demo_outliers} dims x {cfg.demo_scale:g}" if cfg.demo_outliers else ""))
    acts = activation_report(model, inputs, thresholds, cfg.demo_outliers, cfg.demo_scale)
    del model, inputs
    log("end to end (held-out loss):")
    losses = base_losses(cfg.model, tokenizer, records, template, cfg.max_length, thresholds, cfg.trust_remote_code,
                         log)
    if cfg.adapter:
        losses.update(adapter_losses(cfg.model, cfg.adapter, tokenizer, records, template, cfg.max_length,
                                     cfg.trust_remote_code, log))
    res = {"setup": _setup(cfg, thresholds, records, source, losses, acts, start), "weights": weights,
           "activations": acts, "losses": losses}
    res["paths"] = write_report(cfg.output_dir, res)
    res["json"] = to_json(res)
    log(summary(res))
    log(f"report: {res['paths']['md']} (and report.html, quantlab.json, 3 PNGs)")
    return res


def _setup(cfg, thresholds, records, source, losses, acts, start) -> dict:
    import bitsandbytes
    import torch

    return {"model": cfg.model, "adapter": cfg.adapter, "data": cfg.data, "thresholds": thresholds,
            "records": len(records), "heldout_records": len(records), "heldout_source": source,
            "tokens": losses["fp32"]["tokens"], "rows": cfg.max_rows, "demo_outliers": cfg.demo_outliers,
            "demo_scale": cfg.demo_scale, "bitsandbytes": bitsandbytes.__version__,
            "torch": torch.__version__, "seconds": time.time() - start}


def summary(res) -> str:
    """The main figures as a few lines of text."""
    from .report import mean_product
    from .weights import WEIGHT_SCHEMES

    w = res["weights"]["(all layers)"]
    lines = ["weights, all layers (relative error): " + ", ".join(f"{s} {w[s]['rel']:.4f}" for s in WEIGHT_SCHEMES)]
    for demo in (False, True) if res["setup"]["demo_outliers"] else (False,):
        m = mean_product(res, demo)
        lines.append(("product, DEMONSTRATION outliers" if demo else "product, real inputs") + " (mean relative "
                     "error over layers): " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    lines.append("held-out loss: " + ", ".join(f"{k} {v['loss']:.4f}" for k, v in res["losses"].items()))
    return "\n".join(lines)
