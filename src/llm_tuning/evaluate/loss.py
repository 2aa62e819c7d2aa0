"""Losses of a model on data it did not train on: the held-out loss (mean cross-entropy over response tokens,
prompt masked, eos included) and the text loss (mean cross-entropy over every token of plain texts, no template:
what forgetting is measured with), each with its perplexity."""

from __future__ import annotations

import math


def _batches(enc, batch_size):
    for i in range(0, len(enc.input_ids), batch_size):
        yield enc.input_ids[i:i + batch_size], enc.labels[i:i + batch_size]


def _token_mean_loss(model, pad: int, enc, batch_size: int, progress=None) -> tuple[float, int]:
    """(sum of the cross-entropies of every labelled token of `enc`, their count): every token counts once
    whatever the batch it lands in, so the mean depends neither on the batch size nor on the padding.
    progress: called with the number of examples of each batch once it is scored (a progress bar's update)."""
    import torch
    import torch.nn.functional as F

    from ..data.tokenize import IGNORE

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in _batches(enc, batch_size):
            width = max(len(x) for x in ids)
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
            if progress:
                progress(len(ids))
    if was_training:
        model.train()
    return total, count


def _result(total: float, count: int, **extra) -> dict:
    mean = total / count if count else float("nan")
    return {"loss": mean, "perplexity": math.exp(min(mean, 700)) if count else float("nan"), **extra,
            "tokens": count}


def response_loss(model, tokenizer, records, template="default", max_length=512, batch_size=8,
                  progress=None) -> dict:
    """Token-weighted mean cross-entropy over response tokens of `records`."""
    from ..data.tokenize import encode_records

    enc = encode_records(tokenizer, records, template, max_length)
    total, count = _token_mean_loss(model, tokenizer.pad_token_id, enc, batch_size, progress)
    return _result(total, count, records=len(enc.input_ids))


def text_loss(model, tokenizer, texts: list[str], max_length=512, batch_size=8, progress=None) -> dict:
    """Token-weighted mean cross-entropy over every token of plain `texts` (no template; each from the start
    token, truncated to max_length), as PEFT's method comparison measures its models on Wikipedia text: an
    adapter's text loss minus its base's is how much it forgot of what the base predicted."""
    from ..data.tokenize import encode_texts

    enc = encode_texts(tokenizer, texts, max_length)
    total, count = _token_mean_loss(model, tokenizer.pad_token_id, enc, batch_size, progress)
    return _result(total, count, texts=len(enc.input_ids))
