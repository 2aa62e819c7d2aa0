"""End to end: the held-out response loss of the model loaded in fp32, LLM.int8 at each threshold, NF4 and FP4;
with an adapter, merged-then-quantised against the adapter on the quantised base.

Every quantised model is loaded the way training loads it (models.load.load_model), so these are the numbers a
user of `train --quantization` gets: 8-bit through Linear8bitLt at `int8_threshold=T` (its input cast to fp16,
vector-wise int8, and at T > 0 the outlier dimensions in fp16), 4-bit NF4 with double quantisation and fp32
compute. `train` offers NF4 only; FP4 (the same settings with quant_type fp4) is built here, for comparison.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .activations import threshold_key

ADAPTER_SCHEMES = ("llm_int8@6", "nf4")  # the two bases `train --quantization` offers (8bit at its default 6)


def _fp4_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def load_scheme(name: str, scheme: str, trust_remote_code: bool = False):
    """The model at `name` loaded as `scheme`: fp32, llm_int8@T, nf4 or fp4."""
    from ...models.load import load_model

    if scheme == "fp32":
        return load_model(name, "fp32", trust_remote_code)
    if scheme.startswith("llm_int8@"):
        return load_model(name, "fp32", trust_remote_code, "8bit", float(scheme.split("@", 1)[1]))
    if scheme == "nf4":
        return load_model(name, "fp32", trust_remote_code, "4bit")
    if scheme == "fp4":
        return load_model(name, "fp32", trust_remote_code, quantization_config=_fp4_config())
    raise ValueError(f"unknown end-to-end scheme {scheme!r}")


def base_schemes(thresholds) -> list[str]:
    return ["fp32"] + [f"llm_int8@{threshold_key(t)}" for t in thresholds] + ["nf4", "fp4"]


def _loss(model, tokenizer, records, template, max_length):
    from ...evaluate import response_loss

    r = response_loss(model, tokenizer, records, template, max_length)
    return {"loss": r["loss"], "perplexity": r["perplexity"], "tokens": r["tokens"]}


def base_losses(model_name, tokenizer, records, template, max_length, thresholds, trust_remote_code=False,
                log=print) -> dict:
    """{scheme: {'loss', 'perplexity', 'tokens'}} for the base model under every scheme."""
    out = {}
    for scheme in base_schemes(thresholds):
        model = load_scheme(model_name, scheme, trust_remote_code)
        out[scheme] = _loss(model, tokenizer, records, template, max_length)
        log(f"  {scheme}: loss {out[scheme]['loss']:.4f}")
        del model
    return out


def adapter_losses(model_name, adapter, tokenizer, records, template, max_length, trust_remote_code=False,
                   log=print) -> dict:
    """The adapter on the fp32 base ('adapter'), and for each of ADAPTER_SCHEMES: merged into the fp32 base and
    then quantised ('merged_then_<q>') against put on the quantised base as it is ('adapter_on_<q>')."""
    from ...infer.load import load_for_inference
    from ...methods import get_method, method_of_adapter

    method = get_method(method_of_adapter(adapter))
    model, _, _ = load_for_inference(model_name, adapter, "fp32", trust_remote_code)
    out = {"adapter": _loss(model, tokenizer, records, template, max_length)}
    merged_dir = tempfile.mkdtemp(prefix="quantlab-merged-")
    try:
        method.merge(model).save_pretrained(merged_dir)
        for q in ADAPTER_SCHEMES:
            merged = load_scheme(merged_dir, q)
            out[f"merged_then_{q}"] = _loss(merged, tokenizer, records, template, max_length)
            base = load_scheme(model_name, q, trust_remote_code)
            on, _, _ = load_for_inference(model_name, adapter, "fp32", trust_remote_code, base=base)
            out[f"adapter_on_{q}"] = _loss(on, tokenizer, records, template, max_length)
            log(f"  {q}: merged then quantised {out[f'merged_then_{q}']['loss']:.4f}, adapter on the quantised "
                f"base {out[f'adapter_on_{q}']['loss']:.4f}")
    finally:
        shutil.rmtree(merged_dir, ignore_errors=True)
    return out


def check_adapter(adapter: str):
    """Fail before any work on an adapter that cannot be merged (the merged-then-quantised comparison needs it)."""
    from ...methods import get_method, method_of_adapter

    if not os.path.isdir(adapter):
        from ...errors import UserError

        raise UserError(f"--adapter {adapter}: no such adapter folder")
    get_method(method_of_adapter(adapter)).check_mergeable()
