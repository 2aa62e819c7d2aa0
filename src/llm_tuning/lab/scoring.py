"""Generation quality: greedy answers to held-out records, scored with ROUGE-1/2/L and BLEU-4 (metrics.py)."""

from __future__ import annotations

import json


def generation_metrics(model, tokenizer, records, template, sampling, batch_size=8, predictions_path=None) -> dict:
    """Batched answers to `records` (`sampling`: a sampling.Sampling, greedy unless it samples), scored against their
    `output` with ROUGE-1/2/L and BLEU-4. With `predictions_path`, writes one JSON line per record: prompt,
    reference, prediction."""
    from ..data.templates import format_prompt
    from ..infer.generate import answer_ids
    from .metrics import score

    predictions, ids = answer_ids(model, tokenizer, records, template, sampling, batch_size=batch_size)
    references = [r["output"] for r in records]
    if predictions_path:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for r, pred in zip(records, predictions):
                f.write(json.dumps({"prompt": format_prompt(r, template, tokenizer), "reference": r["output"],
                                    "prediction": pred}, ensure_ascii=False) + "\n")
    result = score(predictions, references)
    result["predictions"] = predictions
    result["answers"] = answer_stats(ids, predictions, tokenizer.eos_token_id, sampling.max_new_tokens)
    return result


def answer_stats(ids: list[list[int]], predictions: list[str], eos_token_id: int, max_new_tokens: int) -> dict:
    """What the answers are like, beside their scores: mean length in new tokens (eos not counted), the share that
    ran to the token limit without the model ending it, the share that is empty (no text), and the share of each
    answer's token trigrams that repeat an earlier one (loops), averaged over answers; shares in %."""
    lengths, repeats, at_limit = [], [], 0
    for seq in ids:
        ended = bool(seq) and seq[-1] == eos_token_id
        body = seq[:-1] if ended else seq
        at_limit += not ended and len(seq) >= max_new_tokens
        lengths.append(len(body))
        grams = [tuple(body[i:i + 3]) for i in range(len(body) - 2)]
        repeats.append(1 - len(set(grams)) / len(grams) if grams else 0.0)
    n = max(1, len(ids))
    return {"answer_tokens": sum(lengths) / n, "answers_at_limit": 100 * at_limit / n,
            "answers_empty": 100 * sum(not p.strip() for p in predictions) / n,
            "repeated_trigrams": 100 * sum(repeats) / n}
