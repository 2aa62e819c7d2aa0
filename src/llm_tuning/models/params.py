"""Counting what a model trains."""

from __future__ import annotations


def is_prompt_learning(model) -> bool:
    """A PEFT model whose adapter adds virtual tokens or a prefix (prompt tuning, P-tuning, prefix tuning)."""
    cfg = getattr(model, "active_peft_config", None)
    return bool(cfg is not None and getattr(cfg, "is_prompt_learning", False))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), each shared (tied) tensor counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already yields a tied tensor once
        # DeepSpeed ZeRO-3 leaves each process an empty placeholder of a partitioned weight; ds_numel is its size
        n = getattr(p, "ds_numel", None) or p.numel()
        # bitsandbytes 4-bit weights are packed two per byte
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def describe_parameters(model) -> str:
    trainable, total = count_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} / total: {total:,} ({pct:.4f}%)"
