"""Merging an adapter into its base: a standalone transformers model (LoRA, IA3, BitFit)."""

from __future__ import annotations

import os
import shutil

from ..errors import UserError, spell
from .compat import check_adapter
from .load import load_for_inference, run_info


def _quantized_gap(model_path, adapter, merged, tokenizer, info, trust_remote_code, log):
    """An adapter trained on an 8/4-bit base is merged into the full-precision base; say how far apart they are."""
    from ..data.formats import load_records
    from ..evaluate import response_loss
    from ..data import SAMPLE_DATA

    cfg = info.get("config", {})
    try:
        records = load_records(cfg.get("data") or SAMPLE_DATA, skip_bad_records=True).records[:8]
    except UserError:
        records = load_records(SAMPLE_DATA).records[:8]
    quant, _, _ = load_for_inference(model_path, adapter, cfg.get("precision", "fp32"), trust_remote_code,
                                     info["quantization"])
    kw = dict(template=info.get("template", "default"), max_length=min(cfg.get("max_length", 512), 256))
    a, b = response_loss(quant, tokenizer, records, **kw), response_loss(merged, tokenizer, records, **kw)
    log(f"on {len(records)} records: adapter on the {info['quantization']} base: loss {a['loss']:.4f}; merged "
        f"full-precision model: loss {b['loss']:.4f} (difference {b['loss'] - a['loss']:+.4f})")
    return a["loss"], b["loss"]


def _write_card(folder, model_path, adapter, method, info, output, save_precision, save_quantization):
    """The merged model's card: the adapter's held-out figures (its metrics.json) and the merge command."""
    import json
    import shlex

    from ..train.card import write_merged_card

    try:
        with open(os.path.join(adapter, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        metrics = None
    command = " ".join(["llm-tuning merge", "--model", shlex.quote(model_path), "--adapter", shlex.quote(adapter),
                        "--output", shlex.quote(output)]
                       + (["--save-precision", save_precision] if save_precision != "fp32" else [])
                       + (["--save-quantization", save_quantization] if save_quantization else []))
    write_merged_card(folder, output, model_path, adapter, method, info, metrics, command)


MERGE_BASES = ("auto", "original", "dequantized")


def _base_for_merge(model_path, info, merge_base, trust_remote_code, log):
    """The full-precision base an adapter is merged into.

    For an adapter trained on a quantised base there are two honest choices: the original weights (best quality,
    but not the function the adapter was trained against), or the quantised weights dequantised to fp32 (exactly
    what it was trained against). "auto": dequantized for 4-bit, whose NF4 rounding is large on small models and
    whose generic CPU path dequantises exactly; original for 8-bit, since LLM.int8 also quantises activations, so
    no fp32 weights reproduce it and the original ones are closer."""
    from ..models.load import load_model

    quant = info.get("quantization")
    if merge_base not in MERGE_BASES:
        raise UserError(f"--merge-base {merge_base!r} is unknown; choose one of {', '.join(MERGE_BASES)}")
    if merge_base == "auto":
        merge_base = "dequantized" if quant == "4bit" else "original"
    if quant and merge_base == "dequantized":
        cfg = info.get("config", {})
        base = load_model(model_path, "fp32", trust_remote_code, quant, cfg.get("int8_threshold", 6.0)).dequantize()
        log(f"merging into the {quant} base dequantised to fp32 (what the adapter was trained on)")
        return base
    if quant:
        log(f"merging into the original full-precision base (the adapter was trained on its {quant} version)")
    return load_model(model_path, "fp32", trust_remote_code)


def merge(model_path: str, adapter: str, output: str, overwrite: bool = False, trust_remote_code: bool = False,
          save_precision: str = "fp32", merge_base: str = "auto", save_quantization: str | None = None,
          log=print) -> str:
    """Fold a LoRA / IA3 / BitFit adapter into a full-precision base and save a standalone transformers model.

    An adapter trained on an 8-bit or 4-bit base is merged into full-precision weights too (merging into
    integer weights would round the update away): see _base_for_merge."""
    from ..methods import get_method, method_of_adapter

    method = get_method(method_of_adapter(adapter))
    method.check_mergeable()
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise UserError(f"{spell('output', output)}: not empty; choose a new folder or pass {spell('overwrite')}")
    check_adapter(adapter, model_path, trust_remote_code)  # before the base is loaded
    info = run_info(adapter)
    info["quantization"] = info.get("config", {}).get("quantization")
    base = _base_for_merge(model_path, info, merge_base, trust_remote_code, log)
    model, tokenizer, _ = load_for_inference(model_path, adapter, "fp32", trust_remote_code, base=base)
    merged = method.merge(model)
    if info["quantization"]:
        _quantized_gap(model_path, adapter, merged, tokenizer, info, trust_remote_code, log)
    from ..models.load import torch_dtype

    merged = merged.to(torch_dtype(save_precision))
    tmp = output.rstrip("/") + ".tmp-merge"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if save_quantization:
        # Re-quantise: reload the merged weights through bitsandbytes and save them in its serialised form.
        from ..models.load import load_model

        requant = load_model(tmp, save_precision, quantization=save_quantization)
        shutil.rmtree(tmp)
        requant.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        log(f"saved the merged model re-quantised to {save_quantization}")
    _write_card(tmp, model_path, adapter, method.name, info, output, save_precision, save_quantization)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    log(f"merged the {method.name} adapter {adapter} into {model_path}; standalone model saved to {output}")
    return output
