"""Evaluation: a model measured on records it did not train on.

    loss.py          the held-out loss (mean cross-entropy over response tokens) and the text loss (every token of
                     plain texts: forgetting), with their perplexity
    text_metrics.py  ROUGE-1/2/L and BLEU-4 of a text against its reference
    answers.py       answers already generated, scored against their references and written out

It sits below train/ and infer/ and imports neither: it generates nothing. The caller decodes the answers
(infer/scoring.py) and evaluate scores what it is given.
"""

from .answers import answer_stats, score_answers, write_predictions
from .loss import response_loss, text_loss

__all__ = ["answer_stats", "response_loss", "score_answers", "text_loss", "write_predictions"]
