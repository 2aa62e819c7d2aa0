"""The architecture as the estimator sees it: shapes from a config (folder, hub id, config.json or preset)."""

from __future__ import annotations

import json
import os

from ...config.options import PRECISION_DTYPES
from ...models.arch import BLOOM_TYPES, LLAMA_TYPES, Arch, EstimateError, _get, arch_of

__all__ = ["PRESETS", "Arch", "EstimateError", "arch_of", "load_config", "stored_dtype", "BLOOM_TYPES", "LLAMA_TYPES"]


# Real configs (config.json fields) of the models the project is tuned for, usable as `--model NAME`.
PRESETS = {
    # Langboat/bloom-1b4-zh: 1,303,111,680 parameters (embeddings tied to the output layer).
    "bloom-1b4": {"model_type": "bloom", "vocab_size": 46145, "hidden_size": 2048, "n_layer": 24, "n_head": 16,
                  "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "hidden_dropout": 0.0,
                  "attention_dropout": 0.0},
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters.
    "llama-2-7b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                   "attention_bias": False, "mlp_bias": False, "torch_dtype": "float16"},
}

DTYPE_BYTES = {k: nbytes for k, (_, nbytes) in PRECISION_DTYPES.items()}
FP32 = 4
INT64 = 8
# NF4 with double quantisation (models.quantization_config): 4 bits per weight, an 8-bit absmax per block of
# 64 weights, and an fp32 absmax per 256 of those blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

STORED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PRECISION_DTYPE = {k: name for k, (name, _) in PRECISION_DTYPES.items()}


def stored_dtype(config) -> str | None:
    """The dtype the checkpoint's weights are stored in (config.json's dtype / torch_dtype), where it says (a
    loaded config or a config dict; None for an Arch, which has no such field)."""
    d = _get(config, "dtype", "torch_dtype")
    d = str(d).replace("torch.", "") if d is not None else None
    return d if d in STORED_BYTES else None


def load_config(model: str):
    """A preset's config dict, or the transformers config of a local folder / hub id (config only, no weights)."""
    if model in PRESETS:
        return dict(PRESETS[model])
    from ...models.load import resolve_source

    model = resolve_source(model)  # modelscope:ORG/NAME -> its folder in ModelScope's local cache
    if os.path.isfile(model):
        if model.endswith(".json"):
            with open(model) as f:
                return json.load(f)
        raise EstimateError(f"{model}: is a file; expected a model folder, a config.json, a hub id or a preset "
                            f"({', '.join(PRESETS)})")
    from ...paths import looks_like_local_path

    if looks_like_local_path(model) and not os.path.exists(model):
        raise EstimateError(f"{model}: no such model folder (presets: {', '.join(PRESETS)})")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EstimateError(f"{model}: could not read its config ({first}); presets: {', '.join(PRESETS)}") from None
