"""The held-out loss: mean cross-entropy over response tokens (prompt masked, eos included) and perplexity."""

from __future__ import annotations

import math


def _batches(enc, batch_size):
    for i in range(0, len(enc.input_ids), batch_size):
        yield enc.input_ids[i:i + batch_size], enc.labels[i:i + batch_size]


def response_loss(model, tokenizer, records, template="default", max_length=512, batch_size=8) -> dict:
    """Token-weighted mean cross-entropy over response tokens of `records`.

    Every response token counts once whatever the batch it lands in, so the
    figure does not depend on batch size or padding.
    """
    import torch
    import torch.nn.functional as F

    from ..data.tokenize import IGNORE, encode_records

    enc = encode_records(tokenizer, records, template, max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in _batches(enc, batch_size):
            width = max(len(x) for x in ids)
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
            attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            lab = torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels], device=device)
            logits = model(input_ids=input_ids, attention_mask=attn).logits
            logits = logits[:, -width:, :]  # prompt-tuning models return logits for their virtual tokens too
            shift_logits = logits[:, :-1, :].float()
            shift_labels = lab[:, 1:]
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                   ignore_index=IGNORE, reduction="sum")
            total += loss.item()
            count += int((shift_labels != IGNORE).sum())
    if was_training:
        model.train()
    mean = total / count if count else float("nan")
    return {"loss": mean, "perplexity": math.exp(min(mean, 700)) if count else float("nan"),
            "records": len(enc.input_ids), "tokens": count}
