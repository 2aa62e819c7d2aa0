"""Generation scored: answers decoded here (generate.py), scored by evaluate/ (ROUGE-1/2/L, BLEU-4, what the
answers are like)."""

from __future__ import annotations


def generation_metrics(model, tokenizer, records, template, sampling, batch_size=8, predictions_path=None,
                       progress=None) -> dict:
    """Batched answers to `records` (`sampling`: a Sampling, greedy unless it samples), scored against their
    `output` (evaluate.score_answers). With `predictions_path`, writes one JSON line per record: prompt,
    reference, prediction. progress: called with the number of answers of each batch once it is decoded."""
    from ..data.templates import format_prompt
    from ..evaluate import score_answers, write_predictions
    from .generate import answer_ids

    predictions, ids = answer_ids(model, tokenizer, records, template, sampling, batch_size=batch_size,
                                   progress=progress)
    references = [r["output"] for r in records]
    if predictions_path:
        write_predictions(predictions_path, [format_prompt(r, template, tokenizer) for r in records], references,
                          predictions)
    return score_answers(predictions, ids, references, tokenizer.eos_token_id, sampling.max_new_tokens)
