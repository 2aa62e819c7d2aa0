"""SDPA on each example of a packed row (--packing) for models that take position ids (Llama family).

transformers already keeps a packed row's examples apart: from the position ids it builds a block-diagonal mask
over the whole row for SDPA. That costs the row's length squared (the masked blocks are computed too) and, with a
mask, SDPA cannot take its causal fast path (on CUDA the flash kernel). Here, registered through transformers'
own AttentionInterface (and its SDPA mask function for the mask), each example is attended alone with
transformers' `sdpa_attention_forward` and no mask: causal, exact, the sum of the examples' squared lengths.
Anything that is not a packed row of one batch (padding masks, a KV cache, generation) goes to that same
function unchanged. Bloom's ALiBi attention does the same in speedups.py.
"""

from __future__ import annotations

NAME = "llm_tuning_packed_sdpa"


def _spans(position_ids, q_len):
    """[(start, length)] of the examples of a [1, q_len] packed row (positions restart at 0); kept on the
    position-ids tensor, which every layer (and a checkpointing recompute) receives, so found once per forward."""
    spans = getattr(position_ids, "_llm_tuning_spans", None)
    if spans is None:
        import torch

        p = position_ids[0]
        starts = [0] + ((torch.diff(p) != 1).nonzero().squeeze(1) + 1).tolist() + [q_len]
        spans = position_ids._llm_tuning_spans = [(s, e - s) for s, e in zip(starts[:-1], starts[1:])]
    return spans


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pos = kwargs.pop("position_ids", None)
    q_len = query.shape[2]
    if pos is None or query.shape[0] != 1 or key.shape[2] != q_len or pos.shape[-1] != q_len:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    spans = _spans(pos.reshape(1, -1), q_len)
    if len(spans) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # split, not slices: a slice's backward writes into a zero tensor of the whole row, once per example
    lengths = [n for _, n in spans]
    outs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, **kwargs)[0]
            for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))]
    return torch.cat(outs, dim=1), None  # [batch, length, heads, head_dim], as sdpa_attention_forward returns


def use_packed_attention(model) -> bool:
    """Switch a model running transformers' SDPA to the per-example version; False (unchanged) otherwise."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True


def uses_flash_attention(model) -> bool:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return impl.startswith("flash_attention")


def prepare_for_packing(model) -> str:
    """Per-example attention for packed rows (data/packing.py's collator): Llama-family models running SDPA switch
    to this file's attention (Bloom's speedups attention does it by itself). Returns what was done."""
    if getattr(model.config, "model_type", None) == "bloom":
        return "Bloom: SDPA per example (models/speedups.py)"
    if use_packed_attention(model):
        return "SDPA per example (models/packed_attention.py)"
    return f"{model.config._attn_implementation} attention with transformers' packed mask"
