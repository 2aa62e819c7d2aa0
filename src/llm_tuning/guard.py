"""The pre-flight guard: checks a training setup before the first step, fixes what is safe to fix
(and says so), and refuses what would silently train a broken model."""

from __future__ import annotations

from .data.tokenize import IGNORE
from .errors import UserError

FP16_TINY = 6e-8  # the smallest positive fp16 number; a smaller epsilon rounds to 0


def preflight(tokenizer, input_ids, labels, model, cfg, adam_epsilon: float, collator, log=print) -> list[str]:
    """Checks the tokenised training examples (`input_ids`, `labels`) and the model before the first step.

    Returns the list of fixes made; raises UserError for a setup that cannot train correctly."""
    import torch

    fixes = []
    if tokenizer.padding_side != "right":
        fixes.append(f"padding side was {tokenizer.padding_side!r}: training pads on the right")
        tokenizer.padding_side = "right"

    eos = tokenizer.eos_token_id
    missing = [i for i, ids in enumerate(input_ids) if len(ids) < cfg.max_length and ids[-1] != eos]
    if missing:
        raise UserError(f"{len(missing)} tokenised examples (first: {missing[0]}) do not end with eos id {eos}: "
                        "the model would never learn to stop")

    feats = [{"input_ids": i, "labels": l} for i, l in zip(input_ids[:8], labels[:8])]
    batch = collator(feats)
    padded = batch["attention_mask"] == 0
    if bool((batch["labels"][padded] != IGNORE).any()):
        raise UserError(f"padding (pad id {tokenizer.pad_token_id}) is not masked out of the labels: "
                        "the model would learn to predict padding")

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or sum(p.numel() for p in trainable) == 0:
        raise UserError(f"--method {cfg.method} trains 0 parameters on this model")
    if adam_epsilon < FP16_TINY and any(p.dtype == torch.float16 for p in trainable):
        raise UserError(f"--adam-epsilon {adam_epsilon:g} rounds to 0 for fp16 weights and the update divides by "
                        "zero; use 1e-4 (or leave --adam-epsilon unset)")
    for f in fixes:
        log(f"guard: fixed: {f}")
    return fixes
