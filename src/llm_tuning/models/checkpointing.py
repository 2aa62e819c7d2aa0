"""Gradient checkpointing for every method, prefix tuning included.

transformers' checkpointing drops the KV cache inside checkpointed layers (a replay would
append to it twice), and PEFT feeds prefix-tuning's prefixes through exactly that cache, so
PEFT refuses the combination (peft issues #869, #2191). For prefix tuning we checkpoint each
decoder layer ourselves, keeping the cache: before the layer runs, and again before the backward
pass replays it, its cache entry is reset to the prefix alone, so the replay computes exactly
what the forward did and the prefix still receives its gradient.
"""

from __future__ import annotations


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


def enable_standard(model):
    """The standard transformers mechanism, on the base model (every method but prefix tuning)."""
    if hasattr(model, "activation_checkpointing_enable"):  # newer transformers 5 (5.25 here): the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # With frozen embeddings nothing entering the first layer needs a gradient; checkpointing needs one.
    model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def enable_keeping_prefix(model):
    """Prefix tuning: our own per-layer checkpointing that keeps the prefix cache (on the PEFT model)."""
    for i, layer in enumerate(_decoder_layers(model)):
        _checkpoint_keeping_prefix(layer, i)
    return model
