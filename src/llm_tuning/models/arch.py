"""A decoder's shapes as the memory estimate and the methods' parameter counts see them (no weights)."""

from __future__ import annotations

import dataclasses
import json
import os

from ..errors import UserError


class EstimateError(UserError, ValueError):
    """Bad input to the estimator: a UserError for the CLI, a ValueError for Python callers."""


LLAMA_TYPES = ("llama", "mistral")  # same decoder layer, same PEFT default targets
BLOOM_TYPES = ("bloom",)

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


@dataclasses.dataclass(frozen=True)
class Arch:
    family: str  # "llama" or "bloom"
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict:
        """The decoder-block linear layers: name -> (in_features, out_features, has_bias)."""
        h, i = self.hidden, self.intermediate
        if self.family == "bloom":
            return {"query_key_value": (h, 3 * h, True), "dense": (h, h, True),
                    "dense_h_to_4h": (h, 4 * h, True), "dense_4h_to_h": (4 * h, h, True)}
        ab, mb = self.attention_bias, self.mlp_bias
        return {"q_proj": (h, self.q_dim, ab), "k_proj": (h, self.kv_dim, ab), "v_proj": (h, self.kv_dim, ab),
                "o_proj": (self.q_dim, h, ab), "gate_proj": (h, i, mb), "up_proj": (h, i, mb),
                "down_proj": (i, h, mb)}

    def targets(self, names, what: str) -> list[str]:
        """Decoder-block linears by name ("all-linear": every one); an EstimateError naming a wrong one."""
        lin = self.linears()
        if names in ("all-linear", ["all-linear"]):
            return list(lin)
        names = [names] if isinstance(names, str) else list(names)
        bad = [n for n in names if n not in lin]
        if bad:
            raise EstimateError(f"{what} target module {bad[0]!r} is not a linear layer of a {self.model_type} "
                                f"decoder block ({', '.join(lin)})")
        return names

    def norm_params(self) -> int:
        """Norm parameters of one decoder layer (Bloom LayerNorm: weight + bias; Llama RMSNorm: weight)."""
        return 2 * (2 * self.hidden) if self.family == "bloom" else 2 * self.hidden


def _get(cfg, *names, default=None):
    for n in names:
        v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def arch_of(config) -> Arch:
    """An Arch from a transformers config, a config.json dict, a preset name or a model folder."""
    if isinstance(config, Arch):
        return config
    if isinstance(config, str):
        config = load_config(config)
    model_type = _get(config, "model_type")
    if model_type in BLOOM_TYPES:
        h = int(_get(config, "hidden_size", "n_embed"))
        heads = int(_get(config, "n_head", "num_attention_heads"))
        return Arch("bloom", model_type, int(_get(config, "vocab_size")), h, int(_get(config, "n_layer", "num_hidden_layers")),
                    heads, heads, h // heads, 4 * h, bool(_get(config, "tie_word_embeddings", default=True)))
    if model_type in LLAMA_TYPES:
        h = int(_get(config, "hidden_size"))
        heads = int(_get(config, "num_attention_heads"))
        return Arch("llama", model_type, int(_get(config, "vocab_size")), h, int(_get(config, "num_hidden_layers")),
                    heads, int(_get(config, "num_key_value_heads", default=heads)),
                    int(_get(config, "head_dim", default=h // heads)), int(_get(config, "intermediate_size")),
                    bool(_get(config, "tie_word_embeddings", default=False)),
                    bool(_get(config, "attention_bias", default=False)), bool(_get(config, "mlp_bias", default=False)))
    raise EstimateError(f"model type {model_type!r} is not supported by the estimator; "
                        f"supported: {', '.join(LLAMA_TYPES + BLOOM_TYPES)}")


def count_params(config) -> int:
    """All parameters of the base model, a tied output embedding counted once."""
    a = arch_of(config)
    h = a.hidden
    linear = sum(i * o + (o if b else 0) for i, o, b in a.linears().values())
    per_layer = linear + a.norm_params()
    emb = a.vocab * h
    if a.family == "bloom":
        emb += 2 * h  # word_embeddings_layernorm
        final_norm = 2 * h
    else:
        final_norm = h
    return emb + a.layers * per_layer + final_norm + (0 if a.tied else a.vocab * h)


def load_config(model: str):
    """A preset's config dict, or the transformers config of a local folder / hub id (config only, no weights)."""
    if model in PRESETS:
        return dict(PRESETS[model])
    from .load import resolve_source

    model = resolve_source(model)  # modelscope:ORG/NAME -> its folder in ModelScope's local cache
    if os.path.isfile(model):
        if model.endswith(".json"):
            with open(model) as f:
                return json.load(f)
        raise EstimateError(f"{model}: is a file; expected a model folder, a config.json, a hub id or a preset "
                            f"({', '.join(PRESETS)})")
    from ..paths import looks_like_local_path

    if looks_like_local_path(model) and not os.path.exists(model):
        raise EstimateError(f"{model}: no such model folder (presets: {', '.join(PRESETS)})")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EstimateError(f"{model}: could not read its config ({first}); presets: {', '.join(PRESETS)}") from None
