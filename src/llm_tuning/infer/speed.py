"""Generation speed, measured the same way for every model so that their figures compare: the same prompts in
one batch, greedy, KV-cached (generate.py's decoding, which every method uses), a fixed number of new tokens
(no eos ends an answer early), the best of several timings after a warm-up, the models timed in turn round after
round so that a drifting machine load hits them alike."""

from __future__ import annotations

import time

NEVER = -1  # an eos id no token has: every answer runs its full length


def _timed(model, prompts, pad_token_id, new_tokens) -> float:
    from .generate import generate_ids

    t = time.perf_counter()
    generate_ids(model, prompts, NEVER, pad_token_id, new_tokens, batch_size=len(prompts))
    return time.perf_counter() - t


def tokens_per_s(models: dict, prompts: list[list[int]], pad_token_id: int, new_tokens: int = 32,
                 repeats: int = 3) -> dict:
    """{name: new tokens per second (wall clock)} of each model in `models` answering `prompts`: one warm-up each,
    then `repeats` rounds timing every model in turn, each figure from its fastest round (the least disturbed by
    other work on the machine)."""
    for model in models.values():
        _timed(model, prompts, pad_token_id, new_tokens)
    best = {name: float("inf") for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = min(best[name], _timed(model, prompts, pad_token_id, new_tokens))
    return {name: len(prompts) * new_tokens / s for name, s in best.items()}
