"""Activation bytes autograd keeps, walked op by op through one decoder layer (Llama SDPA; Bloom eager, or the
project's SDPA attention, models/speedups.py)."""

from __future__ import annotations

import dataclasses

from ..methods.base import Footprint
from ..models.arch import Arch
from ..models.checkpointing import checkpointed, int8_inputs_outlive_checkpointing
from .dtype_bytes import FP32, INT64


# ---------------------------------------------------------------- activations


@dataclasses.dataclass
class _Run:
    """What the activation walk needs to know about one training configuration."""
    arch: Arch
    fp: Footprint  # the method's terms (methods/base.py)
    act: int  # bytes of the hidden states between layers
    quant: str | None
    gc: bool
    batch: int
    seq: int  # query positions per sequence (prompt / p-tuning: virtual tokens included)
    kv_len: int  # key positions (prefix: virtual tokens included)
    cache: float = 0.0  # per token: tensors the model's cache holds until the forward returns, not kept after
    every: int = 1  # --checkpoint-every: with gc, the layers checkpointed (models/checkpointing.py's rule)
    int8_inputs: float = 0.0  # per token: the inputs of the last walked layer's 8-bit linears that need a gradient
    sdpa: bool = False  # Bloom: the project's SDPA attention (models/speedups.py) rather than transformers' eager

    def checkpointed(self, index: int) -> bool:
        return self.gc and checkpointed(index, self.every)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def prefix(self) -> bool:
        return self.fp.prefix_tokens > 0

    def trains_weight(self, name: str) -> bool:
        return self.fp.linear_weights  # every linear's weight trains in full fine-tuning, none otherwise

    def trains_something(self, name: str) -> bool:
        """Does the output of linear `name` need a gradient because of its own trainable parameters?"""
        return self.fp.linear_outputs or name in self.fp.adapters

    def keeps_input(self, name: str, input_rg: bool) -> bool:
        """Does the linear keep its (shared) input tensor? A trainable weight needs it for its gradient;
        bitsandbytes' 8-bit matmul stores its input whenever that input needs a gradient (MatMul8bitLt ctx.tensors)."""
        return self.trains_weight(name) or (self.quant == "8bit" and input_rg)

    def adapter_bytes(self, name: str, in_f: int, out_f: int, input_rg: bool) -> tuple[float, bool]:
        """Per token: what the method's adapter on linear `name` keeps, and whether the shared input itself must be
        kept (each method's file says, Footprint.adapters)."""
        kept = self.fp.adapters.get(name)
        return kept(in_f, out_f, self.act, input_rg) if kept else (0.0, False)


def _llama_layer(r: _Run, x_rg: bool) -> tuple[float, bool]:
    """Bytes per token autograd keeps for one Llama decoder layer, and whether its output needs a gradient."""
    a, act = r.arch, r.act
    h, qd, kvd, inter = a.hidden, a.q_dim, a.kv_dim, a.intermediate
    kv_ratio = r.kv_len / r.seq
    norms = r.fp.norm_weights
    kept = 0.0

    def rmsnorm(rg):
        # x.to(fp32) (the fp32 input) kept by pow and by the mul with rsqrt, plus the rsqrt itself (one fp32 per
        # token), when the input needs a gradient; with a trainable norm weight, weight * normed keeps normed.
        return (FP32 * h + FP32 if rg else 0) + (act * h if norms else 0)

    # input_layernorm; y = its output, the input of q, k, v
    y_rg = x_rg or norms
    kept += rmsnorm(x_rg)  # a trainable weight alone needs only the normalised output
    keep_y = False
    for name in ("q_proj", "k_proj", "v_proj"):
        extra, keep = r.adapter_bytes(name, h, a.linears()[name][1], y_rg)
        kept += extra
        keep_y |= keep or r.keeps_input(name, y_rg)
    kept += act * h if keep_y else 0
    attn_rg = y_rg or r.prefix or any(r.trains_something(n) for n in ("q_proj", "k_proj", "v_proj"))
    if attn_rg:
        # Rotary makes new q, k tensors; SDPA (flash / memory-efficient: no score matrix) keeps q, k, v, its output
        # (which is also o_proj's input) and the fp32 logsumexp per head.
        repeated = r.prefix and a.heads != a.kv_heads  # a mask stops SDPA's GQA: k, v are repeated
        kv_saved = qd if repeated else kvd
        kept += act * qd + 2 * act * kv_saved * kv_ratio + act * qd + FP32 * a.heads
        if r.prefix:
            kept += act * r.kv_len  # the additive mask SDPA builds from the bool prefix mask, per layer
    if r.prefix and a.heads != a.kv_heads:
        # the DynamicCache's own (unrepeated) prefix + keys and values: alive until the forward returns
        r.cache += 2 * act * kvd * kv_ratio
    extra, keep = r.adapter_bytes("o_proj", qd, h, attn_rg)
    kept += extra  # o_proj's input is SDPA's output, kept already
    h1_rg = attn_rg or r.trains_something("o_proj")

    # post_attention_layernorm; y2 = its output, the input of gate and up
    kept += rmsnorm(h1_rg)
    y2_rg = h1_rg or norms
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
    r.int8_inputs = act * (h * y_rg + qd * attn_rg + h * y2_rg + inter * mlp_rg) if r.quant == "8bit" else 0.0
    return kept, mlp_rg or r.trains_something("down_proj")


def _bloom_layer(r: _Run, x_rg: bool) -> tuple[float, bool]:
    """Bytes per token autograd keeps for one Bloom block (eager attention: the score matrix is kept)."""
    a, act = r.arch, r.act
    h, nh = a.hidden, a.heads
    kv_ratio = r.kv_len / r.seq
    ln_trains = r.fp.norm_weights or r.fp.norm_biases
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
    attn_rg = y_rg or r.prefix or r.trains_something("query_key_value")
    sdpa = r.sdpa and attn_rg  # the SDPA attention's graph (without a gradient to carry, none is kept)
    if not r.prefix and not r.gc and not sdpa:
        # use_cache is on in training: the cache's k, v are views that keep the fused qkv output alive until the
        # forward returns (the cache is not part of the graph; under SDPA the backward keeps it anyway)
        r.cache += 3 * act * h
    if sdpa:
        # scaled_dot_product_attention keeps q, k, v, its output and a logsumexp per head (fp32). q, k, v are views
        # of the fused q/k/v output, which q keeps whole; prefix: k, v are the cache's concatenations, kept too.
        # The one [batch, heads, q, kv] bias every layer shares is counted once (_activations).
        kept += 3 * act * h + (2 * act * h * kv_ratio if r.prefix else 0) + act * h + FP32 * nh
    elif attn_rg:
        # reshape to (batch*heads, len, head_dim) copies q, k, v out of the fused output (prefix: k, v are the
        # cache's contiguous concatenations, kept as they are); baddbmm keeps q and k, bmm keeps v and the
        # probabilities; softmax in fp32 keeps its fp32 output, and the cast back to the hidden dtype is another
        kept += act * h + 2 * act * h * kv_ratio
        if r.prefix and not (y_rg or r.trains_something("query_key_value")):
            # q needs no gradient, so baddbmm does not keep k: the cache holds it until the forward returns
            kept -= act * h * kv_ratio
            r.cache += act * h * kv_ratio
        kept += nh * r.kv_len * (FP32 + (act if act != FP32 else 0))
    extra, keep = r.adapter_bytes("dense", h, h, attn_rg)
    kept += extra
    # merged heads, dense's input (SDPA's output is laid out [batch, len, heads, dim]: merging is a view of it)
    kept += act * h if (keep or r.keeps_input("dense", attn_rg)) and not sdpa else 0
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
    r.int8_inputs = act * h * (y_rg + attn_rg + y2_rg + 4 * mlp_rg) if r.quant == "8bit" else 0.0
    return kept, mlp_rg or r.trains_something("dense_4h_to_h")


def _activations(r: _Run) -> dict:
    """Per-phase activation bytes: layers (those not checkpointed), head, checkpoint stash, one layer's worth, what
    is kept below the last checkpointed layer while it is recomputed, layer backward transient."""
    a, act, t = r.arch, r.act, r.tokens
    full = r.fp.linear_weights
    layer = _bloom_layer if a.family == "bloom" else _llama_layer
    # Does the first layer's input need a gradient? Trainable embeddings (full), virtual tokens concatenated to
    # the input (prompt, p-tuning), or enable_input_require_grads for checkpointing (every method but prefix).
    x_rg = full or r.fp.input_tokens > 0 or (r.gc and not r.prefix)
    x_rg_first = x_rg
    per_layer, escaped = [], []
    r.cache = 0.0
    escapes = r.gc and int8_inputs_outlive_checkpointing(r.quant, r.prefix)
    for _ in range(a.layers):
        # DoRA with dropout keeps an fp32 copy of the weight over a half base, for its input's gradient only
        copies = r.fp.weight_copies if x_rg and act != FP32 else 0
        kept, x_rg = layer(r, x_rg)
        per_layer.append(kept * t + copies)
        escaped.append(r.int8_inputs * t if escapes else 0.0)
    cache = r.cache * t
    one_layer = max(per_layer)  # recomputed under checkpointing: that layer as if not checkpointed, inputs needing grad
    if r.gc:
        one_layer = layer(r, True)[0] * t + (r.fp.weight_copies if act != FP32 else 0)
    one_layer += r.fp.layer_constant

    # Before the layers: embedding indices (int64) for a trainable embedding; Bloom's embedding LayerNorm.
    head = INT64 * t if full else 0
    if a.family == "bloom" and (x_rg_first or r.fp.embedding_norm):
        head += (act * a.hidden + 2 * act) * t
    # After them: the final norm keeps its input (Llama: in fp32) and, when it trains, its normalised output.
    # (The output layer and the loss: see estimate(), they depend on the loss path.)
    if a.family == "bloom":
        head += (act * a.hidden + 2 * act) * t
        if r.sdpa:  # the shared ALiBi + mask bias, built once per forward (models/speedups.py)
            head += act * a.heads * t * r.kv_len
    else:
        head += (FP32 * a.hidden + FP32 + (act * a.hidden if r.fp.norm_weights else 0)) * t
    # Checkpointing keeps each checkpointed layer's input (and, for prefix, the cache's keys and values, which our
    # per-layer checkpointing leaves in the cache until the backward; over an 8-bit base, also its 8-bit linears'
    # inputs, models/checkpointing.py); the others keep what they keep unchecked.
    constant = r.fp.layer_constant  # what a layer keeps whatever the tokens (every layer's, or one recomputed)
    stash_one = act * a.hidden * t + (2 * act * a.kv_dim * r.batch * r.kv_len if r.prefix else 0)
    kept = [stash_one + escaped[i] if r.checkpointed(i) else per_layer[i] + constant for i in range(a.layers)]
    ckpt = [i for i in range(a.layers) if r.checkpointed(i)]
    stash = sum(kept[i] for i in ckpt)
    # The last checkpointed layer's recomputation happens with every layer below it still holding what it keeps
    # (every layer checkpointed: the whole stash, as before partial checkpointing).
    below_last = sum(kept[:ckpt[-1] + 1]) if ckpt else 0.0
    # While one layer's backward runs: the gradients of its widest intermediates (Llama: of silu(g)*up, of
    # silu(g), up and g; Bloom: of the gelu output and input, and of the score matrix in fp32 and hidden dtype).
    if a.family == "bloom" and r.sdpa:  # no score matrix: the gelu's gradients, then q, k, v's
        transient = max(2 * act * 4 * a.hidden, act * a.hidden * (1 + 2 * r.kv_len / r.seq)) * t
    elif a.family == "bloom":
        transient = (2 * act * 4 * a.hidden + a.heads * r.kv_len * (FP32 + 2 * act)) * t
    else:
        transient = (4 * act * a.intermediate + 2 * act * a.hidden) * t
    return {"layers": sum(k for i, k in enumerate(kept) if not r.checkpointed(i)), "head": head, "stash": stash,
            "one_layer": one_layer, "below_last_recompute": below_last, "layer_transient": transient,
            "cache": 0.0 if r.gc else cache}
