"""Gradient checkpointing for every method, prefix tuning included.

transformers' checkpointing drops the KV cache inside checkpointed layers (a replay would
append to it twice), and PEFT feeds prefix-tuning's prefixes through exactly that cache, so
PEFT refuses the combination (peft issues #869, #2191). For prefix tuning we checkpoint each
decoder layer ourselves, keeping the cache: before the layer runs, and again before the backward
pass replays it, its cache entry is reset to the prefix alone, so the replay computes exactly
what the forward did and the prefix still receives its gradient.
"""

from __future__ import annotations

import inspect
import sys


def _decoder_layers(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _checkpoint_keeping_prefix(layer, index: int):
    import torch
    from torch.utils.checkpoint import checkpoint

    plain = layer.forward

    def forward(*args, **kwargs):
        if not (layer.training and torch.is_grad_enabled()):
            return plain(*args, **kwargs)
        cache = next((kwargs[k] for k in ("past_key_values", "cache", "layer_past") if kwargs.get(k) is not None), None)
        entry = cache.layers[index] if cache is not None and hasattr(cache, "layers") else None
        prefix = (entry.keys, entry.values) if entry is not None else None

        def run(*a):
            if prefix is not None:
                entry.keys, entry.values = prefix
            return plain(*a, **kwargs)

        return checkpoint(run, *args, use_reentrant=False)

    layer.forward = forward


def check_options(cfg):
    """--checkpoint-every says which layers --gradient-checkpointing checkpoints: alone it is a mistake."""
    if cfg.checkpoint_every != 1 and not cfg.gradient_checkpointing:
        from ..errors import UserError

        value = cfg.checkpoint_every or "auto"  # 0 is auto (config/train.py)
        raise UserError(f"--checkpoint-every {value}: needs --gradient-checkpointing (it says which layers to "
                        "checkpoint); add it, or drop --checkpoint-every")


def checkpointed(index: int, every: int) -> bool:
    """Is decoder layer `index` checkpointed under `--checkpoint-every every`? transformers' every_n_layers rule:
    the first layer, then every `every`-th (the estimate counts the same layers, memory/activations.py)."""
    return index % every == 0


def int8_inputs_outlive_checkpointing(quantization: str | None, prefix: bool) -> bool:
    """Does a checkpointed layer still keep the inputs of its 8-bit linears until the backward?

    bitsandbytes' 8-bit matmul (MatMul8bitLt on CUDA, MatMul8bitFp on CPU) keeps its input as an attribute of its
    autograd context, not as a saved tensor. Non-reentrant checkpointing drops saved tensors only, so under it
    every checkpointed layer of an LLM.int8 base keeps those inputs, in fp32 (on an H200, Llama-2-7B LoRA at
    4 x 512 peaked at 16.9 GiB on an 8-bit base, above fp16's 14.8; those inputs come to 5.7 GiB there). Reentrant
    checkpointing runs the first forward without a graph, so nothing is kept; the transformers path uses it for
    an 8-bit base (`_int8_base`). Prefix tuning's own checkpointing stays non-reentrant, so there they stay:
    the prefix reaches each layer through the cache, not as an input, which reentrant checkpointing does not
    follow (tried: its backward fails, "element 0 of tensors does not require grad")."""
    return quantization == "8bit" and prefix


def _int8_base(model) -> bool:
    """Does the model hold bitsandbytes 8-bit linears? (Without bitsandbytes imported it cannot.)"""
    bnb = sys.modules.get("bitsandbytes.nn")
    return bnb is not None and any(isinstance(m, bnb.Linear8bitLt) for m in model.modules())


def enable_standard(model, every: int = 1):
    """The standard transformers mechanism, on the base model (every method but prefix tuning); `every` > 1:
    only every `every`-th decoder layer. Reentrant over an 8-bit base (int8_inputs_outlive_checkpointing)."""
    enable, kwargs = getattr(model, "activation_checkpointing_enable", None), "activation_checkpointing_kwargs"
    if enable is None:  # transformers before 5.2x: the old name (newer ones warn on it)
        enable, kwargs = model.gradient_checkpointing_enable, "gradient_checkpointing_kwargs"
    extra = {"every_n_layers": every} if "every_n_layers" in inspect.signature(enable).parameters else {}
    enable(**{kwargs: {"use_reentrant": _int8_base(model)}}, **extra)
    if every > 1 and not extra:
        # A transformers 5 without every_n_layers checkpoints every layer; every_n_layers sets the same per-layer
        # switch (GradientCheckpointingLayer.gradient_checkpointing), so set it the same way.
        for i, layer in enumerate(_decoder_layers(model)):
            layer.gradient_checkpointing = checkpointed(i, every)
    # With frozen embeddings nothing entering the first layer needs a gradient; checkpointing needs one.
    model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def enable_keeping_prefix(model, every: int = 1):
    """Prefix tuning: our own per-layer checkpointing that keeps the prefix cache (on the PEFT model)."""
    for i, layer in enumerate(_decoder_layers(model)):
        if checkpointed(i, every):
            _checkpoint_keeping_prefix(layer, i)
    return model


def describe(model, every: int) -> str:
    """'all 24 layers' / '12 of 24 layers: one in 2': what the log says."""
    n = len(_decoder_layers(model))
    if every == 1:
        return f"all {n} layers"
    k = sum(checkpointed(i, every) for i in range(n))
    return f"{k} of {n} layers: one in {every}"
