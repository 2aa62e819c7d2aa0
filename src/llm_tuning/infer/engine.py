"""Streaming generation for the chat REPL and the server: one answer, its text handed out piece by piece.

`stream_generate` decodes one prompt (infer.generate.stream_ids: KV-cached for every method) and calls `on_text` with each piece of text that is safe to show (no
half-decoded character, nothing that could still turn out to be the start of a stop string). `cancelled` is
asked after every token, so Ctrl-C in the REPL or a client that hangs up stops the answer at the next token.

`Worker` runs such generations one at a time on a single thread (an adapter switch is global state of the
shared base model, so two generations must never overlap) and hands their events to asyncio consumers.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable


def _declared(name: str):
    """The default of generation option `name` as the command line declares it (config/commands.py)."""
    from ..config.commands import GenerateConfig

    return GenerateConfig.__dataclass_fields__[name].default


@dataclass
class Sampling:
    """How to decode: the typed slice of the generation options that library calls take. temperature 0 is greedy
    (the default, as the commands' without --sample); stop strings end the answer (they are not part of it)."""

    max_new_tokens: int = _declared("max_new_tokens")
    temperature: float = 0.0
    top_p: float = _declared("top_p")
    stop: tuple = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @classmethod
    def from_config(cls, cfg) -> "Sampling":
        """From a command's options (--max-new-tokens, --sample, --temperature, --top-p, --seed)."""
        return cls(cfg.max_new_tokens, cfg.temperature if cfg.sample else 0.0, cfg.top_p, (), getattr(cfg, "seed", None))


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
    from .generate import stream_ids

    room = check_context(model, tokenizer, prompt_ids)
    budget = sampling.max_new_tokens if room is None else min(sampling.max_new_tokens, room)
    text = _Text(tokenizer, sampling.stop, lstrip)
    eos, n, reason = tokenizer.eos_token_id, 0, "length"
    steps = stream_ids(model, [prompt_ids], eos, tokenizer.pad_token_id, budget, do_sample=not sampling.greedy,
                       temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed)
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


# ---------------------------------------------------------------- one generation at a time


@dataclass
class Job:
    """One request's work, run by the Worker; its events reach the asyncio side through `events`."""

    fn: Callable  # fn(job) -> result; it may job.emit("text"/"start", ...) and should stop when job.cancelled
    loop: object  # the asyncio loop of the request
    events: object  # asyncio.Queue of (kind, value): ("text", str), ("done", result), ("error", exception)
    cancelled: bool = False
    id: int = field(default_factory=itertools.count().__next__)

    def emit(self, kind, value):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Worker:
    """A single thread that runs jobs in the order they arrive, one at a time (FIFO)."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}  # generations so far, by how they ended
        self.thread = threading.Thread(target=self._run, name="llm-tuning-generation", daemon=True)
        self.thread.start()

    def submit(self, fn) -> Job:
        import asyncio

        job = Job(fn, asyncio.get_running_loop(), asyncio.Queue())
        self.jobs.put(job)
        return job

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled:
                continue
            try:
                result = job.fn(job)
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers with an error
                self.counts["failed"] += 1
                job.emit("error", e)
            else:
                self.counts["cancelled" if getattr(result, "finish_reason", "") == "cancelled" else "finished"] += 1
                job.emit("done", result)

    def close(self):
        self.jobs.put(None)
