"""Loading a base model with a trained adapter (any method) for inference."""

from __future__ import annotations

import json
import os


def run_info(adapter: str | None) -> dict:
    from ..methods import RUN_INFO

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
    from ..data.tokenize import prepare_tokenizer
    from ..methods import get_method, method_of_adapter
    from ..models.load import load_model, load_tokenizer
    from .compat import check_adapter

    info = run_info(adapter)
    if adapter:
        method = get_method(method_of_adapter(adapter))
        info.setdefault("method", method.name)
        if not method.saves_model:  # a whole model needs no base
            check_adapter(adapter, model_path, trust_remote_code)
        if method.saves_model:
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
