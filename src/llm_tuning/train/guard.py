"""The pre-flight guard: checks a training setup before the first step, fixes what is safe to fix
(and says so), and refuses what would silently train a broken model."""

from __future__ import annotations

from ..data.tokenize import IGNORE
from ..errors import UserError

FP16_TINY = 6e-8  # the smallest positive fp16 number; a smaller epsilon rounds to 0


def _lengths_and_last_tokens(input_ids):
    """Per example: its length and last token. Vectorised on a `datasets` column: 50,000 examples in
    milliseconds instead of the second a conversion to Python lists takes."""
    import numpy as np

    if hasattr(input_ids, "data") and hasattr(input_ids, "column_names"):  # a datasets.Dataset
        col = input_ids.data.column("input_ids").combine_chunks()
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        values = col.values.to_numpy()
        return lengths, values[np.maximum(offsets[1:] - 1, 0)]
    return np.array([len(x) for x in input_ids]), np.array([x[-1] if x else -1 for x in input_ids])


def preflight(tokenizer, input_ids, labels, model, cfg, adam_epsilon: float, collator, log=print) -> list[str]:
    """Checks the tokenised training examples and the model before the first step.

    `input_ids`/`labels`: lists of token lists, or a `datasets.Dataset` with those columns passed as both.
    Returns the list of fixes made; raises UserError for a setup that cannot train correctly."""
    import torch

    fixes = []
    if tokenizer.padding_side != "right":
        fixes.append(f"padding side was {tokenizer.padding_side!r}: training pads on the right")
        tokenizer.padding_side = "right"

    eos = tokenizer.eos_token_id
    lengths, last = _lengths_and_last_tokens(input_ids)
    missing = ((lengths < cfg.max_length) & (last != eos)).nonzero()[0]
    if len(missing):
        raise UserError(f"{len(missing)} tokenised examples (first: {missing[0]}) do not end with eos id {eos}: "
                        "the model would never learn to stop")

    if hasattr(input_ids, "column_names"):
        head = input_ids[:8]
        input_ids, labels = head["input_ids"], head["labels"]
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
