"""Generation quality: greedy answers to held-out records, scored with ROUGE-1/2/L and BLEU-4 (metrics.py)."""

from __future__ import annotations

import json


def generation_metrics(model, tokenizer, records, template, sampling, batch_size=8, predictions_path=None) -> dict:
    """Batched answers to `records` (`sampling`: an engine.Sampling, greedy unless it samples), scored against their
    `output` with ROUGE-1/2/L and BLEU-4. With `predictions_path`, writes one JSON line per record: prompt,
    reference, prediction."""
    from ..data.templates import format_prompt
    from ..infer import generate
    from .metrics import score

    predictions = generate(model, tokenizer, records, template, sampling, batch_size=batch_size)
    references = [r["output"] for r in records]
    if predictions_path:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for r, pred in zip(records, predictions):
                f.write(json.dumps({"prompt": format_prompt(r, template, tokenizer), "reference": r["output"],
                                    "prediction": pred}, ensure_ascii=False) + "\n")
    result = score(predictions, references)
    result["predictions"] = predictions
    return result
