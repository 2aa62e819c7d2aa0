"""Inference: load a base (+ adapter), generate answers, merge an adapter into its base."""

from __future__ import annotations

import json
import os
import shutil

from .errors import UserError


def _run_info(adapter: str | None) -> dict:
    from .methods import RUN_INFO

    if adapter and os.path.exists(os.path.join(adapter, RUN_INFO)):
        with open(os.path.join(adapter, RUN_INFO)) as f:
            return json.load(f)
    return {}


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, n)) for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def load_for_inference(model_path: str, adapter: str | None = None, precision: str = "fp32",
                       trust_remote_code: bool = False, quantization: str | None = None, base=None):
    """Returns (model, tokenizer, info); info holds the adapter's method and training template, if known.
    `base`: an already loaded base model to put the adapter on (default: load `model_path`)."""
    from .data.tokenize import prepare_tokenizer
    from .methods import get_method, method_of_adapter
    from .models import load_model, load_tokenizer

    info = _run_info(adapter)
    if adapter:
        method = get_method(method_of_adapter(adapter))
        info.setdefault("method", method.name)
        if method.name == "full":
            model = method.load(None, adapter)
        else:
            if base is None:
                base = load_model(model_path, precision, trust_remote_code, quantization)
            model = method.load(base, adapter)
    else:
        model = load_model(model_path, precision, trust_remote_code, quantization)
    tok_src = adapter if adapter and _has_tokenizer(adapter) else model_path
    tokenizer = prepare_tokenizer(load_tokenizer(tok_src, trust_remote_code), log=lambda m: None)
    model.eval()
    return model, tokenizer, info


def generate(model, tokenizer, records: list[dict], template: str = "default", max_new_tokens: int = 128,
             batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Answers for alpaca records (the `output` field is ignored). Greedy by default; stops at eos."""
    import torch

    from .data.templates import format_prompt
    from .data.tokenize import encode_prompt
    from .models import is_prompt_learning

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    if is_prompt_learning(model):
        return [_generate_without_cache(model, tokenizer, r, template, max_new_tokens, do_sample, temperature, top_p)
                for r in records]
    answers = []
    for i in range(0, len(records), batch_size):
        prompts = [encode_prompt(tokenizer, format_prompt(r, template)) for r in records[i:i + batch_size]]
        width = max(len(p) for p in prompts)
        # Left padding for generation, so every prompt ends where its answer starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        gen_kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=pad)
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, **gen_kwargs)
        for row in out[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def _quantized_gap(model_path, adapter, merged, tokenizer, info, trust_remote_code, log):
    """An adapter trained on an 8/4-bit base is merged into the full-precision base; say how far apart they are."""
    from .data.formats import load_records
    from .evaluate import response_loss
    from .models import SAMPLE_DATA

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


MERGE_BASES = ("auto", "original", "dequantized")


def _base_for_merge(model_path, info, merge_base, trust_remote_code, log):
    """The full-precision base an adapter is merged into.

    For an adapter trained on a quantised base there are two honest choices: the original weights (best quality,
    but not the function the adapter was trained against), or the quantised weights dequantised to fp32 (exactly
    what it was trained against). "auto": dequantized for 4-bit, whose NF4 rounding is large on small models and
    whose generic CPU path dequantises exactly; original for 8-bit, since LLM.int8 also quantises activations, so
    no fp32 weights reproduce it and the original ones are closer."""
    from .models import load_model

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


def _generate_without_cache(model, tokenizer, record, template, max_new_tokens, do_sample, temperature, top_p):
    """Decoding for prompt tuning, P-tuning and prefix tuning: one record at a time, a full forward per token.

    With transformers 5.24 and PEFT 0.21, `generate` on these models is wrong: it hands the model its own
    (empty) cache under the new `cache` name, so the prefix PEFT puts under `past_key_values` is silently
    ignored (a prefix adapter generated exactly what the base model generates, seen on stories260K); prompt
    tuning crashes on a mask shape; and with left padding PEFT drops position ids. The plain forward applies
    the virtual tokens correctly, so we decode with it: slower (no KV cache), but the tokens are the model's.
    tests/test_methods.py::test_generation_follows_the_adapter checks this for every method."""
    import torch

    from .data.templates import format_prompt
    from .data.tokenize import encode_prompt

    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, format_prompt(record, template))], device=device)
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
            if do_sample:
                probs = torch.softmax(logits / max(temperature, 1e-5), -1)
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < top_p
                nxt = order[keep][torch.multinomial(sorted_p[keep] / sorted_p[keep].sum(), 1)]
            else:
                nxt = logits.argmax().view(1)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if int(nxt) == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def merge(model_path: str, adapter: str, output: str, overwrite: bool = False, trust_remote_code: bool = False,
          save_precision: str = "fp32", merge_base: str = "auto", save_quantization: str | None = None,
          log=print) -> str:
    """Fold a LoRA / IA3 / BitFit adapter into a full-precision base and save a standalone transformers model.

    An adapter trained on an 8-bit or 4-bit base is merged into full-precision weights too (merging into
    integer weights would round the update away): see _base_for_merge."""
    from .methods import get_method, method_of_adapter

    method = get_method(method_of_adapter(adapter))
    method.check_mergeable()
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise UserError(f"--output {output}: not empty; choose a new folder or pass --overwrite")
    info = _run_info(adapter)
    info["quantization"] = info.get("config", {}).get("quantization")
    base = _base_for_merge(model_path, info, merge_base, trust_remote_code, log)
    model, tokenizer, _ = load_for_inference(model_path, adapter, "fp32", trust_remote_code, base=base)
    merged = method.merge(model)
    if info["quantization"]:
        _quantized_gap(model_path, adapter, merged, tokenizer, info, trust_remote_code, log)
    from .models import torch_dtype

    merged = merged.to(torch_dtype(save_precision))
    tmp = output.rstrip("/") + ".tmp-merge"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if save_quantization:
        # Re-quantise: reload the merged weights through bitsandbytes and save them in its serialised form.
        from .models import load_model

        requant = load_model(tmp, save_precision, quantization=save_quantization)
        shutil.rmtree(tmp)
        requant.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        log(f"saved the merged model re-quantised to {save_quantization}")
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    log(f"merged the {method.name} adapter {adapter} into {model_path}; standalone model saved to {output}")
    return output
