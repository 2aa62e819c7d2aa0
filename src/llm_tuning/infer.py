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
                       trust_remote_code: bool = False):
    """Returns (model, tokenizer, info); info holds the adapter's method and training template, if known."""
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
            model = method.load(load_model(model_path, precision, trust_remote_code), adapter)
    else:
        model = load_model(model_path, precision, trust_remote_code)
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

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
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


def merge(model_path: str, adapter: str, output: str, overwrite: bool = False, trust_remote_code: bool = False,
          log=print) -> str:
    """Fold a LoRA / IA3 / BitFit adapter into its base and save a standalone transformers model."""
    from .methods import get_method, method_of_adapter

    method = get_method(method_of_adapter(adapter))
    method.check_mergeable()
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise UserError(f"--output {output}: not empty; choose a new folder or pass --overwrite")
    model, tokenizer, _ = load_for_inference(model_path, adapter, "fp32", trust_remote_code)
    merged = method.merge(model)
    tmp = output.rstrip("/") + ".tmp-merge"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    log(f"merged the {method.name} adapter {adapter} into {model_path}; standalone model saved to {output}")
    return output
