"""Streaming generation for the chat REPL and the server: one answer, its text handed out piece by piece.

`stream_generate` decodes one prompt (infer.generate.stream_ids: KV-cached for every method) and calls `on_text` with
each piece of text that is safe to show (no half-decoded character, nothing that could still turn out to be the start
of a stop string). `cancelled` is asked after every token, so Ctrl-C in the REPL or a client that hangs up stops the
answer at the next token. The context checks say before decoding whether a prompt leaves room for an answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .generate import stream_ids
from .sampling import Sampling


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int  # the final eos not counted
    finish_reason: str  # "stop" (eos or a stop string), "length" (max_new_tokens), "cancelled"
    token_ids: list[int] = field(default_factory=list)  # as decoded, the final eos included
    logprobs: list | None = None  # logprobs.TokenLogprob of each of token_ids, when asked
    prompt_logprobs: list | None = None  # ... of each prompt token (the first has no log-probability), when asked
    first_token_at: float | None = None  # time.monotonic() when its first token was decoded


class ContextTooLong(ValueError):
    """The prompt leaves no room for an answer in the model's context window."""


def context_limit(model, tokenizer) -> int | None:
    """Tokens the model can attend to (virtual tokens of prompt learning subtracted); None: no known limit."""
    cfg = getattr(model, "config", None)
    limit = None
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        if isinstance(getattr(cfg, name, None), int):
            limit = getattr(cfg, name)
            break
    if limit is None and 0 < getattr(tokenizer, "model_max_length", 0) < 10**7:
        limit = tokenizer.model_max_length
    peft_cfg = getattr(model, "active_peft_config", None)
    if limit is not None and getattr(peft_cfg, "is_prompt_learning", False):
        limit -= getattr(peft_cfg, "num_virtual_tokens", 0) or 0
    return limit


def check_context(model, tokenizer, prompt_ids) -> int | None:
    """Room left for the answer in the model's context window (None: no known limit); ContextTooLong if none."""
    limit = context_limit(model, tokenizer)
    if limit is not None and len(prompt_ids) >= limit:
        raise ContextTooLong(f"the prompt is {len(prompt_ids)} tokens; this model attends to at most {limit} "
                             "(prompt and answer together)")
    return None if limit is None else limit - len(prompt_ids)


def surely_too_long(tokenizer, chars: int, limit: int | None) -> bool:
    """True when a text of `chars` characters cannot fit in `limit` tokens, whatever it says: no token of the
    vocabulary spells more than L characters, so the text needs at least chars / L tokens (L doubled for
    normalisers that join characters). The server refuses such a prompt without tokenising it, which for
    megabytes takes seconds of CPU."""
    if limit is None:
        return False
    longest = getattr(tokenizer, "_llm_tuning_longest_token", None)
    if longest is None:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        tokenizer._llm_tuning_longest_token = longest
    return chars > 2 * longest * limit


class _Text:
    """The growing answer as text: what may be shown so far, and where a stop string ended it.

    Decoded incrementally (as vLLM does): only the ids since the last complete piece are decoded, beside the
    few before them, and the difference is the new text. So a long answer costs the same per token as a short
    one, a SentencePiece word keeps its leading space, and an incomplete multi-byte character waits for its
    other bytes."""

    def __init__(self, tokenizer, stop, lstrip: bool):
        self.tok, self.stop, self.lstrip = tokenizer, [s for s in stop if s], lstrip
        self.ids: list[int] = []
        self.start = self.read = 0  # ids[start:read] were decoded last time, ids[:read] are in self.decoded
        self.decoded = ""
        self.text, self.sent, self.stopped = "", 0, False

    def _decode(self, final: bool) -> str:
        before = self.tok.decode(self.ids[self.start:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.start:], skip_special_tokens=True)
        if final or (len(now) > len(before) and not now.endswith("\ufffd")):
            self.decoded += now[len(before):]
            self.start, self.read = self.read, len(self.ids)
        return self.decoded

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._update(self._decode(final=False), final=False)

    def flush(self) -> str:
        return "" if self.stopped else self._update(self._decode(final=True), final=True)

    def _update(self, text: str, final: bool) -> str:
        text = text.lstrip() if self.lstrip else text
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            return self._take(len(self.text))
        self.text = text
        hold = 0 if final else max((k for s in self.stop for k in range(1, min(len(s), len(text) + 1))
                                    if text.endswith(s[:k])), default=0)
        return self._take(len(text) - hold)

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece


def stream_generate(model, tokenizer, prompt_ids: list[int], sampling: Sampling,
                    on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] = lambda: False,
                    lstrip: bool = False) -> Completion:
    """Decode one prompt (token ids) with infer.generate's KV-cached loop (every method); stops at eos, a stop
    string, max_new_tokens or when `cancelled()` turns true. ContextTooLong if the prompt leaves no room."""
    hand_out = None if on_text is None else (lambda i, piece, entries: piece and on_text(piece))
    return stream_batch(model, tokenizer, [prompt_ids], sampling, hand_out, cancelled, lstrip)[0]


def stream_batch(model, tokenizer, prompts: list[list[int]], sampling: Sampling,
                 on_text: Callable[[int, str, list], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False, lstrip: bool = False, logprobs: int | None = None,
                 echo: bool = False, on_prompt: Callable[[int, list], None] | None = None) -> list[Completion]:
    """Decode several prompts as one batch (each row stops on its own: eos, a stop string, its length or the
    context's end); a row's text goes to `on_text(row, piece, entries)` as it becomes safe to show.
    `logprobs` (k): every answer token's log-probability and the k most likely at its place (logprobs.py), in
    `entries` and the Completion; with `echo` the prompt's too (`on_prompt(row, entries)` before the first
    token). ContextTooLong if a prompt leaves no room."""
    from .logprobs import AnswerLogprobs, prompt_logprobs

    scoring = logprobs is not None
    rows = []
    for p in prompts:
        room = check_context(model, tokenizer, p)
        budget = sampling.max_new_tokens if room is None else min(sampling.max_new_tokens, room)
        rows.append(_Row(tokenizer, p, budget, lstrip, sampling.stop,
                         AnswerLogprobs(tokenizer, p, logprobs) if scoring else None))

    def prompt_rows(logits):
        for i, (row, p, rows_i) in enumerate(zip(rows, prompts, logits)):
            row.prompt_logprobs = prompt_logprobs(tokenizer, p, rows_i, logprobs)
            if on_prompt:
                on_prompt(i, row.prompt_logprobs)

    steps = stream_ids(model, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       max(r.budget for r in rows), do_sample=not sampling.greedy, temperature=sampling.temperature,
                       top_p=sampling.top_p, seed=sampling.seed, penalties=sampling.penalties(), scores=scoring,
                       on_prompt=prompt_rows if echo and scoring else None)
    try:
        for step in steps:
            tokens, logits = step if scoring else (step, None)
            for i, (row, token) in enumerate(zip(rows, tokens)):
                if row.reason is None and token is not None:
                    row.take(token, None if logits is None else logits[i], tokenizer.eos_token_id, i, on_text)
            if all(r.reason is not None for r in rows):
                break
            if cancelled():
                for row in rows:
                    row.reason = row.reason or "cancelled"
                break
    finally:
        steps.close()  # decoding ends here, not at max_new_tokens
    return [row.finish(i, on_text) for i, row in enumerate(rows)]


class _Row:
    """One answer of a batch as it is decoded: its text, token ids, log-probabilities and why it ended."""

    def __init__(self, tokenizer, prompt, budget: int, lstrip: bool, stop, scores):
        self.text, self.prompt, self.budget, self.scores = _Text(tokenizer, stop, lstrip), prompt, budget, scores
        self.ids: list[int] = []
        self.entries: list = []  # the answer tokens' log-probabilities, when scored
        self.prompt_logprobs = None  # the prompt's, when echoed
        self.reason: str | None = None if budget > 0 else "length"
        self.ended_by_eos = False
        self.first_token_at = None

    def take(self, token: int, logits, eos: int, i: int, on_text) -> None:
        if not self.ids:
            self.first_token_at = time.monotonic()
        self.ids.append(token)
        entry = self.scores.add(token, logits) if self.scores is not None else None
        if entry is not None:
            self.entries.append(entry)
        piece = "" if token == eos else self.text.add(token)
        if on_text and (piece or entry is not None):
            on_text(i, piece, [] if entry is None else [entry])
        self.ended_by_eos = token == eos
        if token == eos or self.text.stopped:
            self.reason = "stop"
        elif len(self.ids) >= self.budget:
            self.reason = "length"

    def finish(self, i: int, on_text) -> Completion:
        rest = self.text.flush()
        if rest and on_text:
            on_text(i, rest, [])
        return Completion(self.text.text, len(self.prompt), len(self.ids) - self.ended_by_eos,
                          self.reason or "length", self.ids, self.entries if self.scores is not None else None,
                          self.prompt_logprobs, self.first_token_at)
