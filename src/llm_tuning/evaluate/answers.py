"""Answers already generated, scored: ROUGE-1/2/L and BLEU-4 against their references (text_metrics.py), what
the answers are like (length, ends, loops), and the answers written out one JSON line each.

Nothing here generates: the caller decodes the answers (infer/scoring.py) and hands over their texts and ids.
"""

from __future__ import annotations

import json

from .text_metrics import score


def score_answers(predictions: list[str], ids: list[list[int]], references: list[str], eos_token_id: int,
                  max_new_tokens: int) -> dict:
    """`score`'s means over the (prediction, reference) pairs, the predictions themselves ("predictions") and
    `answer_stats` of their token ids ("answers"); `max_new_tokens`: the limit they were decoded under."""
    result = score(predictions, references)
    result["predictions"] = list(predictions)
    result["answers"] = answer_stats(ids, predictions, eos_token_id, max_new_tokens)
    return result


def write_predictions(path: str, prompts: list[str], references: list[str], predictions: list[str]) -> None:
    """One JSON line per answer: the prompt as the model read it, the reference, the prediction."""
    with open(path, "w", encoding="utf-8") as f:
        for prompt, reference, prediction in zip(prompts, references, predictions):
            f.write(json.dumps({"prompt": prompt, "reference": reference, "prediction": prediction},
                               ensure_ascii=False) + "\n")


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
