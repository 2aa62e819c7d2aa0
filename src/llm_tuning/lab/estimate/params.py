"""Parameter counts in closed form: the base model, and what each method trains."""

from __future__ import annotations

import dataclasses

from ...config import TrainConfig
from .arch import IA3_FEEDFORWARD, METHODS, Arch, EstimateError, arch_of


# ---------------------------------------------------------------- parameter counts


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


def _opts(opts) -> TrainConfig:
    """The method options as a TrainConfig (defaults where not given); opts may be a dict or a TrainConfig."""
    if isinstance(opts, TrainConfig):
        return opts
    base = TrainConfig()
    if not opts:
        return base
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in opts if k not in fields]
    if unknown:
        raise EstimateError(f"unknown method option {unknown[0]!r}")
    return dataclasses.replace(base, **{k: v for k, v in opts.items() if v is not None})


def _check_method(method: str):
    if method not in METHODS:
        raise EstimateError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")


def _targets(a: Arch, names, what: str) -> list[str]:
    lin = a.linears()
    if names in ("all-linear", ["all-linear"]):
        return list(lin)
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in lin]
    if bad:
        raise EstimateError(f"{what} target module {bad[0]!r} is not a linear layer of a {a.model_type} decoder "
                            f"block ({', '.join(lin)})")
    return names


def lora_targets(a: Arch, o: TrainConfig) -> list[str]:
    # PEFT's per-architecture defaults (peft.utils.constants TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    default = ["query_key_value"] if a.family == "bloom" else ["q_proj", "v_proj"]
    return _targets(a, o.target_modules or default, "LoRA")


def ia3_targets(a: Arch, o: TrainConfig) -> tuple[list[str], set]:
    """(target modules, the feed-forward ones, whose input is scaled) as PEFT / methods/ia3.py choose them."""
    if o.target_modules:
        names = _targets(a, o.target_modules, "IA3")
        return names, {n for n in names if n in IA3_FEEDFORWARD}
    if a.family == "bloom":
        return ["query_key_value", "dense_4h_to_h"], {"dense_4h_to_h"}
    return ["k_proj", "v_proj", "down_proj"], {"down_proj"}


def _bitfit_added(a: Arch) -> int:
    """Zero biases BitFit adds (Llama linears without a bias); Bloom has all its biases already."""
    if a.family == "bloom":
        return 0
    return a.layers * sum(o for i, o, b in a.linears().values() if not b)


def trainable_params(config, method: str, opts=None) -> int:
    """Trainable parameters after applying `method` (closed form, exact for this project's methods)."""
    _check_method(method)
    a, o = arch_of(config), _opts(opts)
    h, n = a.hidden, o.num_virtual_tokens
    if method == "full":
        return count_params(a)
    if method == "bitfit":
        if a.family == "bloom":  # every bias: 4 linears + 2 LayerNorms per layer, embedding and final LayerNorm
            per_layer = sum(out for _, out, _ in a.linears().values()) + 2 * h
            return a.layers * per_layer + 2 * h
        return a.layers * sum(out for _, out, _ in a.linears().values())  # added or existing biases
    if method == "prompt":
        return n * h  # the virtual-token embeddings
    if method == "ptuning":
        e = o.encoder_hidden_size or h
        if o.encoder == "mlp":  # Linear(h, e), Linear(e, e), Linear(e, h)
            enc = (h * e + e) + (e * e + e) + (e * h + h)
        elif o.encoder == "lstm":  # 2-layer bidirectional LSTM(h -> e), then Linear(2e, 2e), Linear(2e, h)
            lstm = 2 * (4 * e * (h + e) + 8 * e) + 2 * (4 * e * (2 * e + e) + 8 * e)
            enc = lstm + (2 * e * 2 * e + 2 * e) + (2 * e * h + h)
        else:
            raise EstimateError(f"--encoder {o.encoder!r} is unknown; choose mlp or lstm")
        return n * h + enc
    if method == "prefix":
        kv, width = a.kv_dim, a.layers * 2 * a.kv_dim  # per virtual token: a key and a value for every layer
        if o.prefix_projection:
            e = o.encoder_hidden_size or h
            return n * kv + (kv * e + e) + (e * width + width)
        return n * width
    if method == "lora":
        lin = a.linears()
        return a.layers * sum(o.lora_r * (lin[t][0] + lin[t][1]) for t in lora_targets(a, o))
    if method == "ia3":
        lin = a.linears()
        names, ff = ia3_targets(a, o)
        return a.layers * sum(lin[t][0] if t in ff else lin[t][1] for t in names)
    raise AssertionError(method)
