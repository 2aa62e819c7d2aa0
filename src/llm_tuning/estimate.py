"""Peak training memory from a model config alone: `llm-tuning estimate`.

No weights are read: the numbers follow from the tensor shapes of the architecture, the method, the
precision, the quantisation, the batch and the sequence length. The estimate models what *this project's*
training does (see train.py): a plain half-precision or fp32 base, no autocast; PEFT adapters in fp32 over a
half base (`_trainable_to_fp32`); `prepare_model_for_kbit_training` over a quantised base (which casts the
non-quantised weights to fp32); AdamW; transformers' SDPA attention for Llama, transformers' eager attention for Bloom (train.py
replaces it with SDPA by default, speedups.py, which keeps less: one shared bias instead of each layer's
[B, heads, L, L] probabilities, so for Bloom the estimate is an upper bound; modelling the SDPA path is still
to do); the fused output layer + loss of fastloss.py (vocabulary blocks or row chunks) for every method (unless fast_loss is off;
that path runs without a KV cache), the stock causal-LM loss over B·L·V logits otherwise.

Every byte count below names the tensor it is. Per-token activation terms come from walking the forward of
one decoder layer op by op and asking, for each op, which inputs or outputs autograd keeps for the backward
(and only when something upstream or the op's own weight needs a gradient). Checked against autograd's
saved tensors and against measured peak RSS of real training steps in tests/test_estimate.py.

Not modelled (small, or not tensors of the training step): padding masks (a padded batch gives SDPA a B·L·L
mask per layer), the p-tuning / prefix-projection encoders' own activations (num_virtual_tokens rows), the
runtime itself (the CUDA context, the caching allocator's fragmentation, cuBLAS / MKL / oneDNN workspaces and
caches, typically some tens of MiB), data loading. The optimizer-step transient assumes PyTorch's per-tensor
AdamW (the CPU default); a foreach AdamW makes temporaries of all trainable tensors at once, a fused one none.
"""

from __future__ import annotations

import dataclasses
import json
import os

from .config import TrainConfig, parse_bool
from .errors import UserError
from .fastloss import FAST_METHODS, VOCAB_BLOCK, block_rows, chunk_rows


class EstimateError(UserError, ValueError):
    """Bad input to the estimator: a UserError for the CLI, a ValueError for Python callers."""


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
                   "attention_bias": False, "mlp_bias": False},
}

METHODS = ("full", "bitfit", "prompt", "ptuning", "prefix", "lora", "ia3")
PEFT_METHODS = ("prompt", "ptuning", "prefix", "lora", "ia3")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4
INT64 = 8
LLAMA_TYPES = ("llama", "mistral")  # same decoder layer, same PEFT default targets
BLOOM_TYPES = ("bloom",)
# Output-side linears that PEFT's IA3 scales on their *input* (feed-forward modules), as methods/ia3.py.
IA3_FEEDFORWARD = ("down_proj", "dense_4h_to_h", "fc2", "c_proj", "w2")
# NF4 with double quantisation (models.quantization_config): 4 bits per weight, an 8-bit absmax per block of
# 64 weights, and an fp32 absmax per 256 of those blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

# What `total` sums; `quantisation_savings` is information (already inside `weights`).
SUMMED = ("weights", "trainable_weights", "gradients", "optimizer", "activations", "overhead", "freed_before_peak")
LABELS = {
    "weights": "base weights",
    "trainable_weights": "trainable weights (adapter)",
    "gradients": "gradients",
    "optimizer": "optimizer (AdamW, 2 states)",
    "activations": "activations kept for backward",
    "overhead": "transient at the peak",
    "freed_before_peak": "not alive at the peak",
    "total": "total (peak)",
    "quantisation_savings": "saved by quantisation",
}


# ---------------------------------------------------------------- the architecture


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


def load_config(model: str):
    """A preset's config dict, or the transformers config of a local folder / hub id (config only, no weights)."""
    if model in PRESETS:
        return dict(PRESETS[model])
    if os.path.isfile(model):
        if model.endswith(".json"):
            with open(model) as f:
                return json.load(f)
        raise EstimateError(f"{model}: is a file; expected a model folder, a config.json, a hub id or a preset "
                            f"({', '.join(PRESETS)})")
    from .paths import looks_like_local_path

    if looks_like_local_path(model) and not os.path.exists(model):
        raise EstimateError(f"{model}: no such model folder (presets: {', '.join(PRESETS)})")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EstimateError(f"{model}: could not read its config ({first}); presets: {', '.join(PRESETS)}") from None


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


# ---------------------------------------------------------------- activations


@dataclasses.dataclass
class _Run:
    """What the activation walk needs to know about one training configuration."""
    arch: Arch
    method: str
    act: int  # bytes of the hidden states between layers
    quant: str | None
    gc: bool
    batch: int
    seq: int  # query positions per sequence (prompt / p-tuning: virtual tokens included)
    kv_len: int  # key positions (prefix: virtual tokens included)
    lora: dict  # target -> True
    lora_r: int
    lora_dropout: float
    ia3: dict  # target -> is_feedforward
    cache: float = 0.0  # per token: tensors the model's cache holds until the forward returns, not kept after

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def trains_weight(self, name: str) -> bool:
        return self.method == "full"  # every linear's weight trains in full fine-tuning, none otherwise

    def trains_something(self, name: str) -> bool:
        """Does the output of linear `name` need a gradient because of its own trainable parameters?"""
        return self.method in ("full", "bitfit") or name in self.lora or name in self.ia3

    def keeps_input(self, name: str, input_rg: bool) -> bool:
        """Does the linear keep its (shared) input tensor? A trainable weight needs it for its gradient;
        bitsandbytes' 8-bit matmul stores its input whenever that input needs a gradient (MatMul8bitLt ctx.tensors)."""
        return self.trains_weight(name) or (self.quant == "8bit" and input_rg)

    def adapter_bytes(self, name: str, in_f: int, out_f: int, input_rg: bool) -> tuple[float, bool]:
        """Per token: what LoRA / IA3 on linear `name` keep, and whether the shared input itself must be kept."""
        kept, keep_input = 0.0, False
        if name in self.lora:
            # PEFT casts the input to the fp32 adapter dtype (a new tensor unless it is fp32 already), applies
            # dropout (a new fp32 tensor, kept by lora_A for its weight gradient; the fp32 dropout mask is kept too
            # when the input needs a gradient), then lora_B keeps lora_A's r-wide fp32 output.
            if self.lora_dropout > 0:
                kept += FP32 * in_f + (FP32 * in_f if input_rg else 0)
            elif self.act != FP32:
                kept += FP32 * in_f  # the fp32 copy of the input, kept by lora_A
            else:
                keep_input = True  # lora_A keeps the very input tensor
            kept += FP32 * self.lora_r
        if name in self.ia3:
            if self.ia3[name]:
                kept += FP32 * in_f  # feed-forward: x.to(fp32) * scale keeps the fp32 input
            else:
                kept += self.act * out_f  # base output * scale keeps the base output
        return kept, keep_input


def _llama_layer(r: _Run, x_rg: bool) -> tuple[float, bool]:
    """Bytes per token autograd keeps for one Llama decoder layer, and whether its output needs a gradient."""
    a, act = r.arch, r.act
    h, qd, kvd, inter = a.hidden, a.q_dim, a.kv_dim, a.intermediate
    kv_ratio = r.kv_len / r.seq
    full = r.method == "full"
    kept = 0.0

    def rmsnorm(rg):
        # x.to(fp32) (the fp32 input) kept by pow and by the mul with rsqrt, plus the rsqrt itself (one fp32 per
        # token); with a trainable norm weight, weight * normed keeps normed (hidden dtype).
        return (FP32 * h + FP32 if rg else 0) + (act * h if full else 0)

    # input_layernorm; y = its output, the input of q, k, v
    y_rg = x_rg or full
    kept += rmsnorm(x_rg or full)
    keep_y = False
    for name in ("q_proj", "k_proj", "v_proj"):
        extra, keep = r.adapter_bytes(name, h, a.linears()[name][1], y_rg)
        kept += extra
        keep_y |= keep or r.keeps_input(name, y_rg)
    kept += act * h if keep_y else 0
    attn_rg = y_rg or r.method == "prefix" or any(r.trains_something(n) for n in ("q_proj", "k_proj", "v_proj"))
    if attn_rg:
        # Rotary makes new q, k tensors; SDPA (flash / memory-efficient: no score matrix) keeps q, k, v, its output
        # (which is also o_proj's input) and the fp32 logsumexp per head.
        repeated = r.method == "prefix" and a.heads != a.kv_heads  # a mask stops SDPA's GQA: k, v are repeated
        kv_saved = qd if repeated else kvd
        kept += act * qd + 2 * act * kv_saved * kv_ratio + act * qd + FP32 * a.heads
        if r.method == "prefix":
            kept += act * r.kv_len  # the additive mask SDPA builds from the bool prefix mask, per layer
    if r.method == "prefix" and a.heads != a.kv_heads:
        # the DynamicCache's own (unrepeated) prefix + keys and values: alive until the forward returns
        r.cache += 2 * act * kvd * kv_ratio
    extra, keep = r.adapter_bytes("o_proj", qd, h, attn_rg)
    kept += extra  # o_proj's input is SDPA's output, kept already
    h1_rg = attn_rg or r.trains_something("o_proj")

    # post_attention_layernorm; y2 = its output, the input of gate and up
    kept += rmsnorm(h1_rg or full)
    y2_rg = h1_rg or full
    keep_y2 = False
    for name in ("gate_proj", "up_proj"):
        extra, keep = r.adapter_bytes(name, h, inter, y2_rg)
        kept += extra
        keep_y2 |= keep or r.keeps_input(name, y2_rg)
    kept += act * h if keep_y2 else 0
    mlp_rg = y2_rg or r.trains_something("gate_proj") or r.trains_something("up_proj")
    if mlp_rg:
        kept += 3 * act * inter  # silu keeps gate's output; silu(g) * up keeps both factors
    extra, keep = r.adapter_bytes("down_proj", inter, h, mlp_rg)
    kept += extra
    if keep or r.keeps_input("down_proj", mlp_rg):
        kept += act * inter  # the product silu(g) * up, down_proj's input
    return kept, mlp_rg or r.trains_something("down_proj")


def _bloom_layer(r: _Run, x_rg: bool) -> tuple[float, bool]:
    """Bytes per token autograd keeps for one Bloom block (eager attention: the score matrix is kept)."""
    a, act = r.arch, r.act
    h, nh = a.hidden, a.heads
    kv_ratio = r.kv_len / r.seq
    ln_trains = r.method in ("full", "bitfit")
    kept = 0.0

    def layernorm(rg):
        # native_layer_norm keeps its input and the per-token mean and rstd (hidden dtype) when anything in it
        # (input, weight or bias) needs a gradient
        return act * h + 2 * act if rg else 0

    y_rg = x_rg or ln_trains
    kept += layernorm(y_rg)
    extra, keep = r.adapter_bytes("query_key_value", h, 3 * h, y_rg)
    kept += extra
    kept += act * h if keep or r.keeps_input("query_key_value", y_rg) else 0
    attn_rg = y_rg or r.method == "prefix" or r.trains_something("query_key_value")
    if r.method != "prefix" and not r.gc:
        # use_cache is on in training: the cache's k, v are views that keep the fused qkv output alive until the
        # forward returns (the cache is not part of the graph)
        r.cache += 3 * act * h
    if attn_rg:
        # reshape to (batch*heads, len, head_dim) copies q, k, v out of the fused output (prefix: k, v are the
        # cache's contiguous concatenations, kept as they are); baddbmm keeps q and k, bmm keeps v and the
        # probabilities; softmax in fp32 keeps its fp32 output, and the cast back to the hidden dtype is another
        kept += act * h + 2 * act * h * kv_ratio
        if r.method == "prefix" and not (y_rg or r.trains_something("query_key_value")):
            # q needs no gradient, so baddbmm does not keep k: the cache holds it until the forward returns
            kept -= act * h * kv_ratio
            r.cache += act * h * kv_ratio
        kept += nh * r.kv_len * (FP32 + (act if act != FP32 else 0))
    extra, keep = r.adapter_bytes("dense", h, h, attn_rg)
    kept += extra
    kept += act * h if keep or r.keeps_input("dense", attn_rg) else 0  # merged heads, dense's input
    h1_rg = attn_rg or r.trains_something("dense")
    y2_rg = h1_rg or ln_trains
    kept += layernorm(y2_rg)
    extra, keep = r.adapter_bytes("dense_h_to_4h", h, 4 * h, y2_rg)
    kept += extra
    kept += act * h if keep or r.keeps_input("dense_h_to_4h", y2_rg) else 0
    mlp_rg = y2_rg or r.trains_something("dense_h_to_4h")
    if mlp_rg:
        kept += act * 4 * h  # GeLUFunction keeps its input
    extra, keep = r.adapter_bytes("dense_4h_to_h", 4 * h, h, mlp_rg)
    kept += extra
    kept += act * 4 * h if keep or r.keeps_input("dense_4h_to_h", mlp_rg) else 0  # gelu output
    return kept, mlp_rg or r.trains_something("dense_4h_to_h")


def _activations(r: _Run) -> dict:
    """Per-phase activation bytes: layers, head, checkpoint stash, one layer's worth, layer backward transient."""
    a, act, t = r.arch, r.act, r.tokens
    full = r.method == "full"
    layer = _bloom_layer if a.family == "bloom" else _llama_layer
    # Does the first layer's input need a gradient? Trainable embeddings (full), virtual tokens concatenated to
    # the input (prompt, p-tuning), or enable_input_require_grads for checkpointing (every method but prefix).
    x_rg = full or r.method in ("prompt", "ptuning") or (r.gc and r.method != "prefix")
    per_layer = []
    r.cache = 0.0
    for _ in range(a.layers):
        kept, x_rg = layer(r, x_rg)
        per_layer.append(kept * t)
    cache = r.cache * t
    one_layer = max(per_layer)  # recomputed under checkpointing: that layer as if not checkpointed, inputs needing grad
    if r.gc:
        one_layer = layer(r, True)[0] * t

    # Before the layers: embedding indices (int64) for a trainable embedding; Bloom's embedding LayerNorm.
    head = INT64 * t if full else 0
    if a.family == "bloom" and (full or r.method in ("bitfit", "prompt", "ptuning") or (r.gc and r.method != "prefix")):
        head += (act * a.hidden + 2 * act) * t
    # After them: the final norm keeps its input (Llama: in fp32) and, when it trains, its normalised output.
    # (The output layer and the loss: see estimate(), they depend on the loss path.)
    if a.family == "bloom":
        head += (act * a.hidden + 2 * act) * t
    else:
        head += (FP32 * a.hidden + FP32 + (act * a.hidden if full else 0)) * t
    # Checkpointing keeps each layer's input (and, for prefix, the cache's keys and values, which our per-layer
    # checkpointing leaves in the cache until the backward).
    stash = 0.0
    if r.gc:
        stash = act * a.hidden * t * a.layers
        if r.method == "prefix":
            stash += 2 * act * a.kv_dim * r.batch * r.kv_len * a.layers
    # While one layer's backward runs: the gradients of its widest intermediates (Llama: of silu(g)*up, of
    # silu(g), up and g; Bloom: of the gelu output and input, and of the score matrix in fp32 and hidden dtype).
    if a.family == "bloom":
        transient = (2 * act * 4 * a.hidden + a.heads * r.kv_len * (FP32 + 2 * act)) * t
    else:
        transient = (4 * act * a.intermediate + 2 * act * a.hidden) * t
    return {"layers": 0.0 if r.gc else sum(per_layer), "head": head, "stash": stash, "one_layer": one_layer,
            "layer_transient": transient, "cache": 0.0 if r.gc else cache}


# ---------------------------------------------------------------- the estimate


def _weights(a: Arch, base_bytes: int, quant: str | None) -> tuple[float, float]:
    """(base weight bytes, largest decoder linear in elements) for the precision and quantisation."""
    total = count_params(a)
    lin = a.linears()
    linear_w = a.layers * sum(i * o for i, o, _ in lin.values())
    if not quant:
        return total * base_bytes, max(i * o for i, o, _ in lin.values())
    rest = total - linear_w  # embeddings, norms, biases, lm_head: prepare_model_for_kbit_training casts them to fp32
    if quant == "8bit":
        # int8 weight + one fp32 scale (SCB) per output row
        q = a.layers * sum(i * o + FP32 * o for i, o, _ in lin.values())
    elif quant == "4bit":
        q = linear_w * NF4_BYTES_PER_PARAM
    else:
        raise EstimateError(f"--quantization {quant!r} is unknown; choose 8bit or 4bit")
    return q + FP32 * rest, max(i * o for i, o, _ in lin.values())


def _largest_trainable(a: Arch, method: str, o: TrainConfig) -> int:
    """Elements of the largest trainable tensor (AdamW's per-tensor step makes temporaries of its size)."""
    if method == "full":
        return max(a.vocab * a.hidden, max(i * out for i, out, _ in a.linears().values()))
    if method == "bitfit":
        return max(out for _, out, _ in a.linears().values())
    if method == "lora":
        lin = a.linears()
        return max(o.lora_r * max(lin[t]) for t in lora_targets(a, o))
    if method == "ia3":
        lin = a.linears()
        names, ff = ia3_targets(a, o)
        return max(lin[t][0] if t in ff else lin[t][1] for t in names)
    e = o.encoder_hidden_size or a.hidden
    if method == "prefix":
        width = a.layers * 2 * a.kv_dim
        return e * width if o.prefix_projection else o.num_virtual_tokens * width
    if method == "ptuning":
        return max(o.num_virtual_tokens, 2 * e) * a.hidden
    return o.num_virtual_tokens * a.hidden  # prompt


def estimate(config, method: str, precision: str = "fp32", quantization: str | None = None, batch_size: int = 1,
             max_length: int = 512, gradient_checkpointing: bool = False, opts=None) -> dict:
    """Peak training memory in bytes, by component (see SUMMED), plus trainable_params and total_params."""
    _check_method(method)
    if precision not in DTYPE_BYTES:
        raise EstimateError(f"--precision {precision!r} is unknown; choose one of {', '.join(DTYPE_BYTES)}")
    if quantization not in (None, "8bit", "4bit"):
        raise EstimateError(f"--quantization {quantization!r} is unknown; choose 8bit or 4bit")
    if quantization and method in ("full", "bitfit"):
        raise EstimateError(f"--method {method} cannot train on a --quantization {quantization} base: its weights "
                            "are frozen integers; use lora, ia3, prompt, ptuning or prefix")
    if batch_size < 1 or max_length < 1:
        raise EstimateError("--batch-size and --max-length must be at least 1")
    a, o = arch_of(config), _opts(opts)
    p = DTYPE_BYTES[precision]
    n_train, n_total = trainable_params(a, method, o), count_params(a)

    weights, largest_linear = _weights(a, p, quantization)
    peft = method in PEFT_METHODS
    # PEFT adapters train in fp32 (train._trainable_to_fp32); full and BitFit train the base's own tensors in its
    # precision; BitFit's zero biases for Llama are new tensors beside the base weights.
    train_bytes = FP32 if peft else p
    trainable_weights = n_train * FP32 if peft else (_bitfit_added(a) * p if method == "bitfit" else 0)
    gradients = n_train * train_bytes
    optimizer = 2 * n_train * train_bytes  # AdamW exp_avg and exp_avg_sq, like the parameters

    # Hidden-state dtype: the precision, except over a quantised base, where the embeddings and norms are fp32
    # (prepare_model_for_kbit_training) and bitsandbytes returns each matmul in its input's dtype.
    act = FP32 if quantization else p
    n = o.num_virtual_tokens
    seq = max_length + (n if method in ("prompt", "ptuning") else 0)
    kv_len = seq + (n if method == "prefix" else 0)
    lora = {t: True for t in lora_targets(a, o)} if method == "lora" else {}
    ia3 = {}
    if method == "ia3":
        names, ff = ia3_targets(a, o)
        ia3 = {t: t in ff for t in names}
    r = _Run(a, method, act, quantization, gradient_checkpointing, batch_size, seq, kv_len, lora, o.lora_r,
             o.lora_dropout, ia3)
    ac = _activations(r)
    t, h, v = r.tokens, a.hidden, a.vocab
    logits_bytes = act if not quantization else FP32  # lm_head output dtype (fp32 lm_head over a quantised base)
    head_trains = method == "full"  # the output layer's weight (Bloom: tied to the input embedding)
    backbone = ac["layers"] + ac["head"] + ac["stash"]
    fast = bool(o.fast_loss) and method in FAST_METHODS
    if fast:
        ac["cache"] = 0.0  # fastloss.py's forward asks for no KV cache
        # fastloss.py (train.py's default for every method): the output layer and the cross-entropy run fused,
        # piece by piece, on the learned positions only (here every position but the last: an upper bound), and
        # their gradients are formed in the forward. Kept for the backward: the hidden-state gradient (and, when
        # the output layer trains, its fp32 weight gradient) and the int64 row and column indices of the learned
        # positions. The logits never exist whole.
        learned = batch_size * (seq - 1)
        out_kept = (act * h + 2 * INT64) * learned + (FP32 * v * h if head_trains else 0)
        if not head_trains and act == FP32:
            # Vocabulary blocks (a frozen fp32 output layer): the learned hidden states gathered for the head, the
            # output layer's rows of their targets, one [rows x VOCAB_BLOCK] block of logits.
            out_forward = act * h * learned + FP32 * h * learned + FP32 * block_rows(learned) * min(VOCAB_BLOCK, v)
        else:
            chunk_logits = chunk_rows(learned, v) * v  # equal chunks of at most CHUNK_ELEMENTS logits
            # Row chunks: the learned hidden states gathered for the head; one chunk's fp32 logits, turned in place
            # into the softmax-gradient (in half precision: the matmul's output before the fp32 copy, and the
            # gradient's cast back); the fp32 weight-gradient product when it trains.
            out_forward = act * h * learned + chunk_logits * (FP32 + (2 * act if act != FP32 else 0)) + (
                FP32 * v * h if head_trains else 0)
        # Its backward: the gradients scaled by the loss's gradient (and cast), the zero-filled gradient of the
        # whole last hidden state the gathered rows scatter into.
        out_backward = act * h * learned + act * h * t + (
            (FP32 + (p if p != FP32 else 0)) * v * h if head_trains else 0)
    else:
        # The stock causal-LM loss: lm_head keeps its input when it trains; log_softmax keeps its fp32 output.
        out_kept = (act * h * t if head_trains else 0) + FP32 * v * t
    kept = backbone + out_kept
    # Dequantising: bitsandbytes materialises one linear's weight at a time in the compute dtype (fp32 for 8-bit's
    # input gradient).
    dequant = largest_linear * (FP32 if quantization == "8bit" else p) if quantization else 0
    step_transient = 2 * _largest_trainable(a, method, o) * train_bytes  # sqrt(exp_avg_sq) and its scaled copy

    activations = kept + (ac["one_layer"] if gradient_checkpointing else 0)
    head_grad = (v * h * p) if head_trains else 0
    if method == "full":
        layer_params = (count_params(a) - a.vocab * a.hidden * (1 if a.tied else 2)) / a.layers
        first_layer_grads = (layer_params + (0 if a.tied else a.vocab * a.hidden)) * p
    elif method in ("bitfit", "lora", "ia3"):
        first_layer_grads = gradients / a.layers
    else:
        first_layer_grads = 0
    # The peak is the largest of these moments (activations alive, gradients alive, transient):
    phases = [
        # the first layer's backward (under checkpointing: its recomputation): every gradient written but its own
        # (and, for full fine-tuning, the input embedding's, computed last)
        (ac["stash"] + ac["one_layer"], gradients - first_layer_grads, ac["layer_transient"] + dequant),
        # optimizer step: every gradient, no activation
        (0, gradients, step_transient),
    ]
    if fast:
        phases += [
            # the backbone returns: its cache is still alive
            (backbone, 0, ac["cache"]),
            # the fused output layer + loss, one block or chunk at a time
            (backbone, 0, out_kept + out_forward),
            # its backward
            (kept, 0, out_backward),
        ]
    else:
        phases += [
            # the loss is computed: the logits, their fp32 copy for the loss (unless fp32 already), the cache
            (kept, 0, logits_bytes * v * t + (FP32 * v * t if logits_bytes != FP32 else 0) + ac["cache"]),
            # the cross-entropy backward: nll_loss's dense fp32 gradient over the vocabulary and log_softmax's fp32
            # input gradient, both alive with the kept log_softmax output
            (kept, 0, 2 * FP32 * v * t),
            # lm_head backward: log_softmax's output freed; the logits' gradient and the weight gradient alive
            (kept - FP32 * v * t, head_grad, logits_bytes * v * t),
        ]
    alive_act, alive_grad, overhead = max(phases, key=lambda ph: sum(ph))
    if fast and (alive_act, overhead) == (backbone, out_kept + out_forward):
        alive_act, overhead = kept, out_forward  # what the fused head keeps is an activation
    freed = (alive_act - activations) + (alive_grad - gradients)

    fp_weights = n_total * p
    out = {"weights": weights, "trainable_weights": trainable_weights, "gradients": gradients,
           "optimizer": optimizer, "activations": activations, "overhead": overhead, "freed_before_peak": freed,
           "quantisation_savings": fp_weights - weights if quantization else 0}
    out = {k: int(round(val)) for k, val in out.items()}
    out["total"] = sum(out[k] for k in SUMMED)
    out["trainable_params"] = n_train
    out["total_params"] = n_total
    return out


# ---------------------------------------------------------------- command line


def add_parser(subparsers):
    p = subparsers.add_parser(
        "estimate", help="predict peak training memory from a model config (no weights needed)",
        description="Peak training memory, broken down, from the model's config alone: base weights, adapter, "
                    "gradients, AdamW states, activations kept for the backward, transients. Presets: "
                    + ", ".join(PRESETS) + ".")
    p.add_argument("--model", required=True, help="a preset (" + ", ".join(PRESETS) + "), a model folder or a hub id")
    p.add_argument("--method", default="lora", help="full, bitfit, prompt, ptuning, prefix, lora, ia3 (default lora)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (default fp32)")
    p.add_argument("--quantization", help="8bit (LLM.int8) or 4bit (NF4) base")
    p.add_argument("--batch-size", type=int, default=1, help="examples per step (default 1)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (default 512)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.05)")
    p.add_argument("--target-modules", help="comma-separated LoRA / IA3 target modules (default: PEFT's choice)")
    p.add_argument("--num-virtual-tokens", type=int, help="prompt / p-tuning / prefix virtual tokens (default 10)")
    p.add_argument("--fast-loss", type=parse_bool, nargs="?", const=True,
                   help="as train's --fast-loss: the output layer only on learned positions, fused with the loss "
                        "(default true; full/bitfit/lora/ia3)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes)")
    return p


def _fmt(n: float) -> str:
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n >= 2**30:
        return f"{sign}{n / 2**30:.2f} GiB"
    return f"{sign}{n / 2**20:.1f} MiB"


def main(args) -> None:
    opts = {}
    for key in ("lora_r", "lora_dropout", "num_virtual_tokens", "fast_loss"):
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    targets = getattr(args, "target_modules", None)
    if targets:
        opts["target_modules"] = [m.strip() for m in targets.split(",") if m.strip()]
    est = estimate(args.model, args.method, precision=getattr(args, "precision", "fp32") or "fp32",
                   quantization=getattr(args, "quantization", None), batch_size=getattr(args, "batch_size", 1),
                   max_length=getattr(args, "max_length", 512),
                   gradient_checkpointing=bool(getattr(args, "gradient_checkpointing", False)), opts=opts)
    if getattr(args, "json", False):
        print(json.dumps(est, indent=2))
        return
    pct = 100.0 * est["trainable_params"] / est["total_params"]
    print(f"{args.model}: {est['total_params']:,} parameters; method {args.method} trains "
          f"{est['trainable_params']:,} ({pct:.4f}%)")
    print(f"precision {getattr(args, 'precision', 'fp32')}" + (f", {args.quantization} base" if getattr(args, "quantization", None) else "")
          + f", batch {args.batch_size} x {args.max_length} tokens"
          + (", gradient checkpointing" if getattr(args, "gradient_checkpointing", False) else ""))
    width = max(len(v) for v in LABELS.values())
    for key in SUMMED:
        if est[key] or key in ("weights", "activations"):
            print(f"  {LABELS[key]:<{width}}  {_fmt(est[key]):>12}")
    print(f"  {'-' * width}  {'-' * 12}")
    print(f"  {LABELS['total']:<{width}}  {_fmt(est['total']):>12}")
    if est["quantisation_savings"]:
        print(f"  ({LABELS['quantisation_savings']}: {_fmt(est['quantisation_savings'])} of base weights)")
