"""Streaming generation for the chat REPL and the server: one answer, its text handed out piece by piece.

`stream_generate` decodes one prompt (infer.generate.stream_ids: KV-cached for every method) and calls `on_text` with
each piece of text that is safe to show (no half-decoded character, nothing that could still turn out to be the start
of a stop string). `cancelled` is asked after every token, so Ctrl-C in the REPL or a client that hangs up stops the
answer at the next token. The context checks say before decoding whether a prompt leaves room for an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .generate import stream_ids
from .sampling import Sampling


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string), "length" (max_new_tokens), "cancelled"


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

    room = check_context(model, tokenizer, prompt_ids)
    budget = sampling.max_new_tokens if room is None else min(sampling.max_new_tokens, room)
    text = _Text(tokenizer, sampling.stop, lstrip)
    eos, n, reason = tokenizer.eos_token_id, 0, "length"
    steps = stream_ids(model, [prompt_ids], eos, tokenizer.pad_token_id, budget, do_sample=not sampling.greedy,
                       temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                       penalties=sampling.penalties())
    try:
        for (token,) in steps:
            if token is None or token == eos:
                reason = "stop"
                break
            n += 1
            piece = text.add(token)
            if piece and on_text:
                on_text(piece)
            if text.stopped:
                reason = "stop"
                break
            if cancelled():
                reason = "cancelled"
                break
    finally:
        steps.close()  # decoding ends here, not at max_new_tokens
    rest = text.flush()
    if rest and on_text:
        on_text(rest)
    return Completion(text.text, len(prompt_ids), n, reason)
