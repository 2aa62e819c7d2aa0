"""The facts of a base model's shape that an adapter depends on: architecture, layer count, hidden size,
vocabulary size. Read from the model's config alone (config.json: no weights), recorded beside every adapter
when it is saved, and checked against the base it is loaded onto (infer/compat.py)."""

from __future__ import annotations

# config attribute -> the fact as a message names it (transformers maps Bloom's n_layer and kin onto these)
FACTS = {"model_type": "architecture", "num_hidden_layers": "layers", "hidden_size": "hidden size",
         "vocab_size": "vocabulary"}


def shape_facts(config) -> dict:
    """{fact: value} of a transformers config (its text decoder's, for a model that has other parts)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {k: getattr(text, k, None) for k in FACTS}


def read_shape_facts(model: str, trust_remote_code: bool = False) -> dict | None:
    """The facts of the model folder or hub id `model` from its config.json; None where it cannot be read (the
    load that follows then says why)."""
    from transformers import AutoConfig

    from .load import resolve_source

    try:
        return shape_facts(AutoConfig.from_pretrained(resolve_source(model), trust_remote_code=trust_remote_code))
    except (OSError, ValueError, KeyError):
        return None
