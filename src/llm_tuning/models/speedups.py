"""Faster, equal replacements for two pieces of transformers' Bloom (measured in benchmarks/train_throughput.py).

transformers 5 runs Bloom with its own eager attention only (no SDPA path: ALiBi is an additive bias the
attention-interface registry does not pass) and with a hand-written tanh-GeLU autograd function of eight
elementwise kernels each way. On this CPU those two were ~15 % of a LoRA step, and eager attention keeps the
[batch, heads, length, length] probabilities of every layer for the backward.

- GeLU: torch's own `gelu(approximate="tanh")` is the same formula (0.79788456 = sqrt(2/pi), 0.044715) and its
  backward is the same derivative, in one vectorised kernel each way.
- Attention: `scaled_dot_product_attention` with ALiBi + causal/padding mask as one additive bias. The bias is
  built once per forward and shared by every layer (the model passes all layers the same `alibi` and mask
  tensors), so the backward keeps one [batch, heads, q, k] tensor instead of one per layer. Anything the
  replacement does not cover (attention weights requested, Bloom's slow-but-exact tensor-parallel path, no
  mask) falls back to the original method.

- Packing (`--packing`, data/packing.py): Bloom takes no position ids, so the packed row's `position_ids` are
  caught by a forward pre-hook and the shared bias becomes block-diagonal: causal inside each example, nothing
  across examples, ALiBi from each key's position inside its own example (the padded batch's values exactly).

Both swaps leave the state dict, the saved adapters and merged models exactly as they were; tests compare
logits and gradients with the stock modules (tests/test_speedups.py).
"""

from __future__ import annotations

import types

# Packed rows: the position ids given to the forward now running (set by a pre-hook, cleared after it), and, on
# the ALiBi tensor a forward built while they were set, those position ids and the examples' spans (attributes:
# gradient checkpointing, non-reentrant in train/checkpointing.py, reruns the layers in the backward after the
# forward has returned, with the same tensor objects; a WeakKeyDictionary would compare tensors with ==).
_PENDING = [None]


def _stash_position_ids(module, args, kwargs):
    # a packed row comes without an attention mask (data/packing.py); position ids beside a padding mask (a
    # caller's generation, say) are not a packed row and keep the stock bias
    if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is None:
        _PENDING[0] = kwargs["position_ids"]


def _clear_position_ids(module, args, kwargs, output):
    _PENDING[0] = None


def _packed_positions(alibi):
    pos = getattr(alibi, "_llm_tuning_positions", None)
    if pos is None and _PENDING[0] is not None:
        pos = alibi._llm_tuning_positions = _PENDING[0]
    return pos


def _packed_bias(pos, heads, dtype):
    """[batch, heads, q, kv] for rows of examples packed end to end (`pos` [batch, len] restarting at 0 for each):
    ALiBi slope x the key's position inside its example, plus the mask (0 where the key is in the query's own
    example and not after it, the dtype's minimum elsewhere) - the padded batch's bias for each example."""
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    pos = pos.to(torch.long)
    first = pos[:, :1] - 1
    segment = (torch.diff(pos, prepend=first, dim=-1) != 1).cumsum(-1)  # which example each token belongs to
    n = pos.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=pos.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal  # [batch, q, kv]
    # Bloom's slopes: the public builder's bias at position 1 (its private slope helper is not in every transformers
    # 5: 5.17, the GPU image's, lacks it)
    slopes = build_alibi_tensor(torch.ones(1, 2, device=pos.device), heads, torch.float32)[:, 0, 1]
    alibi = slopes[None, :, None, None] * pos[:, None, None, :].float()  # [batch, heads, 1, kv]
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=pos.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return (alibi + mask[:, None]).to(dtype)


def _segments(alibi, q_len, heads, dtype):
    """For a packed row of one batch: [(start, length, bias [1, heads, length, length])] of its examples, built
    once per forward and shared by the layers (the bias: ALiBi from each key's position in its example plus the
    causal mask, the padded batch's bias for that example). None when this forward is not a packed row."""
    pos = _packed_positions(alibi)
    if pos is None or pos.shape[-1] != q_len or pos.shape[0] != 1:
        return None
    entry = getattr(alibi, "_llm_tuning_segments", None)
    if entry is None:
        import torch

        p = pos[0].to(torch.long)
        starts = [0] + ((torch.diff(p) != 1).nonzero().squeeze(1) + 1).tolist() + [q_len]  # where positions restart
        biases = {}
        entry = []
        for s, e in zip(starts[:-1], starts[1:]):
            if e - s not in biases:
                biases[e - s] = _packed_bias(torch.arange(e - s, device=p.device)[None], heads, dtype)
            entry.append((s, e - s, biases[e - s]))
        alibi._llm_tuning_segments = entry
    return entry


def _attend_per_example(fused, segments, hidden_size, dropout_p, scale):
    """SDPA on each example of a packed row alone: no padding in the linear layers, and the attention costs the sum
    of the examples' squared lengths (a block-diagonal mask over the whole row costs the row's length squared:
    on the CPU's throughput workload that made packing 0.92-0.94x the padded batch). The fused q/k/v output
    [1, len, heads, 3, head_dim] is split along the row, where each example is one contiguous block, so the
    backward joins contiguous blocks (splitting q, k, v after the transpose made strided copies: 0.71x)."""
    import torch
    import torch.nn.functional as F

    parts = []
    for f, (_, n, bias) in zip(fused.split([n for _, n, _ in segments], dim=1), segments):
        q, k, v = (x.transpose(1, 2) for x in f.unbind(3))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=scale)
        parts.append(out.transpose(1, 2).reshape(1, n, hidden_size))
    return torch.cat(parts, dim=1)


def _shared_bias(alibi, mask, batch, heads):
    """ALiBi [batch*heads, 1, kv] + additive mask [batch, 1, q, kv] -> [batch, heads, q, kv], once per forward."""
    cached = _shared_bias.last
    if cached is not None and cached[0] is alibi and cached[1] is mask:
        return cached[2]
    kv = alibi.shape[-1]
    pos = _packed_positions(alibi)
    if pos is not None and pos.shape[-1] == kv == mask.shape[-2]:  # a packed row (no cache, no prefix)
        bias = _packed_bias(pos.expand(batch, -1), heads, mask.dtype)
    else:
        bias = alibi.view(batch, heads, 1, kv).to(mask.dtype) + mask
    _shared_bias.last = (alibi, mask, bias)  # replaced at the next forward; keeps at most one bias alive
    return bias


_shared_bias.last = None


def _bloom_attention_forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                             output_attentions=False, **kwargs):
    import torch.nn.functional as F
    from transformers.models.bloom.modeling_bloom import dropout_add

    if output_attentions or attention_mask is None or (self.pretraining_tp > 1 and self.slow_but_exact):
        return type(self).forward(self, hidden_states, residual, alibi, attention_mask, layer_past, use_cache,
                                  output_attentions, **kwargs)
    batch, q_len, _ = hidden_states.shape
    fused = self.query_key_value(hidden_states).view(batch, q_len, self.num_heads, 3, self.head_dim)
    dropout_p = self.attention_dropout.p if self.training else 0.0
    segments = _segments(alibi, q_len, self.num_heads, attention_mask.dtype) if layer_past is None else None
    if segments is not None:  # --packing: one row of examples end to end
        context = _attend_per_example(fused, segments, self.hidden_size, dropout_p, self.inv_norm_factor)
        output = dropout_add(self.dense(context), residual, self.hidden_dropout, self.training)
        return output, None
    # views [batch, heads, len, dim]; unbind's backward stacks the three gradients into one tensor, where three
    # separate index views would each zero a whole fused-size gradient and add them up
    query, key, value = (x.transpose(1, 2) for x in fused.unbind(3))
    if layer_past is not None:  # generation, or prefix tuning's virtual keys/values
        key, value = layer_past.update(key, value, self.layer_idx)
    bias = _shared_bias(alibi, attention_mask, batch, self.num_heads)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype),
                                             dropout_p=dropout_p, scale=self.inv_norm_factor)
    context = context.transpose(1, 2).reshape(batch, q_len, self.hidden_size)
    output = dropout_add(self.dense(context), residual, self.hidden_dropout, self.training)
    return output, None


def speed_up(model) -> int:
    """Swap Bloom's GeLU and attention for the equal, faster versions above; returns how many modules changed.
    Other architectures are left alone (transformers already runs Llama with SDPA and a fused SiLU)."""
    import torch.nn as nn

    try:
        from transformers.models.bloom.modeling_bloom import BloomAttention, BloomForCausalLM, BloomGelu, BloomModel
    except ImportError:  # pragma: no cover - transformers without Bloom
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, (BloomForCausalLM, BloomModel)) and not getattr(module, "_packing_hooks", False):
            # BloomForCausalLM does not pass position_ids on to BloomModel: both catch them (--packing)
            module.register_forward_pre_hook(_stash_position_ids, with_kwargs=True)
            module.register_forward_hook(_clear_position_ids, with_kwargs=True)
            module._packing_hooks = True
        if isinstance(getattr(module, "gelu_impl", None), BloomGelu):
            module.gelu_impl = nn.GELU(approximate="tanh")
            changed += 1
        if isinstance(module, BloomAttention) and "forward" not in vars(module):
            module.forward = types.MethodType(_bloom_attention_forward, module)
            changed += 1
    return changed
