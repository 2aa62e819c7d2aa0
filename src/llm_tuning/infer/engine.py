"""Streaming generation for the chat REPL and the server: one answer, its text handed out piece by piece.

`stream_generate` decodes one prompt (infer.generate.stream_ids: KV-cached for every method) and calls `on_text` with each piece of text that is safe to show (no
half-decoded character, nothing that could still turn out to be the start of a stop string). `cancelled` is
asked after every token, so Ctrl-C in the REPL or a client that hangs up stops the answer at the next token.

`Worker` runs such generations one at a time on a single thread (an adapter switch is global state of the
shared base model, so two generations must never overlap) and hands their events to asyncio consumers.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config.commands import GenerateConfig
from ..errors import UserError
from ..options import declared


@dataclass
class Sampling:
    """How to decode: the typed slice of the generation options that library calls take. temperature 0 is greedy
    (the default, as the commands' without --sample); stop strings end the answer (they are not part of it)."""

    max_new_tokens: int = declared(GenerateConfig, "max_new_tokens")
    temperature: float = 0.0
    top_p: float = declared(GenerateConfig, "top_p")
    stop: tuple = ()
    seed: int | None = None
    repetition_penalty: float = declared(GenerateConfig, "repetition_penalty")  # > 1: tokens already there are less likely
    no_repeat_ngram_size: int = declared(GenerateConfig, "no_repeat_ngram_size")  # n > 0: no n-gram twice in prompt + answer

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def penalties(self) -> list:
        """transformers' own logits processors for the loop guards asked for (none at their defaults)."""
        from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        out = [RepetitionPenaltyLogitsProcessor(self.repetition_penalty)] if self.repetition_penalty != 1.0 else []
        return out + ([NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size)] if self.no_repeat_ngram_size else [])

    @classmethod
    def from_config(cls, cfg) -> "Sampling":
        """From a command's options (--max-new-tokens, --sample, --temperature, --top-p, --seed)."""
        return cls(cfg.max_new_tokens, cfg.temperature if cfg.sample else 0.0, cfg.top_p, (), getattr(cfg, "seed", None),
                   cfg.repetition_penalty, cfg.no_repeat_ngram_size)


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
    from .generate import stream_ids

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


# ---------------------------------------------------------------- one generation at a time


class QueueFull(Exception):
    """More requests wait than the worker's bound allows; `retry_after` is a guess in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"{retry_after}")
        self.retry_after = retry_after


class Stopped(Exception):
    """The job was stopped before it finished: `reason` is "client" (went away), "timeout" or "shutdown"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ShuttingDown(Stopped):
    """The server is stopping: the request is not run (or not run to its end)."""

    def __init__(self, reason: str = "shutdown"):
        super().__init__(reason)


@dataclass
class Job:
    """One request's work, run by the Worker; its events reach the asyncio side through `events`."""

    fn: Callable  # fn(job) -> result; it may job.emit("text"/"start", ...) and should stop when job.stopped()
    loop: object  # the asyncio loop of the request
    events: object  # asyncio.Queue of (kind, value): ("text", str), ("done", result), ("error", exception)
    deadline: float | None = None  # time.monotonic() after which the job is stopped as timed out
    cancelled: str | None = None  # why it was stopped: "client" (went away), "timeout", "shutdown"
    ended: bool = False
    id: int = field(default_factory=itertools.count().__next__)

    def emit(self, kind, value):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def stopped(self) -> bool:
        """Asked after every token: the client went away, the deadline passed or the server is stopping."""
        if self.cancelled is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.cancelled = "timeout"
        return self.cancelled is not None


# How a stopped job is counted in /health.
_COUNT_OF = {"client": "cancelled", "timeout": "timed_out", "shutdown": "rejected"}


class Worker:
    """A single thread that runs jobs in the order they arrive, one at a time (FIFO), with at most `max_queue`
    waiting. A job stopped while it waits leaves the queue at once (its place is free for another); a running
    one stops at its next token."""

    def __init__(self, max_queue: int | None = None):
        self.max_queue = max_queue
        self.waiting: collections.deque = collections.deque()
        self.lock = threading.Condition()
        self.running: Job | None = None
        self.closing = self._stopping = False
        self.seconds_per_job = 1.0  # a moving average of how long a job runs, for Retry-After
        # requests so far by how they ended; "rejected": refused (queue full) or dropped at shutdown
        self.counts = {"finished": 0, "cancelled": 0, "timed_out": 0, "rejected": 0, "invalid": 0,
                       "failed": 0}
        self.thread = threading.Thread(target=self._run, name="llm-tuning-generation", daemon=True)
        self.thread.start()

    def submit(self, fn, deadline: float | None = None) -> Job:
        import asyncio

        job = Job(fn, asyncio.get_running_loop(), asyncio.Queue(), deadline)
        with self.lock:
            if self.closing:
                self.counts["rejected"] += 1
                raise ShuttingDown()
            # counted with the running one: the worker may not have taken the first job off the queue yet
            if self.max_queue is not None and len(self.waiting) + (self.running is not None) > self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(max(1, math.ceil(self.seconds_per_job * (len(self.waiting) + 1))))
            self.waiting.append(job)
            self.lock.notify()
        return job

    def stop(self, job: Job, why: str) -> None:
        """Stop `job` for `why` ("client", "timeout", "shutdown"): out of the queue now, or at its next token."""
        with self.lock:
            if job.ended or job.cancelled:
                return
            job.cancelled = why
            if job in self.waiting:
                self.waiting.remove(job)
                self._end(job)

    def drain(self, grace: float) -> None:
        """Shutdown: refuse new jobs, answer every waiting one with ShuttingDown, stop the running one after
        `grace` seconds if it has not finished by then."""
        with self.lock:
            self.closing = True
            while self.waiting:
                job = self.waiting.popleft()
                job.cancelled = "shutdown"
                self._end(job)
            running = self.running
        if running is not None:
            timer = threading.Timer(grace, self.stop, (running, "shutdown"))
            timer.daemon = True
            timer.start()

    def _end(self, job: Job, result=None, error: Exception | None = None) -> None:
        """Count the job once, by how it ended, and tell its request (called with the lock held)."""
        job.ended = True
        if error is not None:
            # a prompt the model cannot take is the client's error, not the server's failure
            self.counts["invalid" if isinstance(error, (ContextTooLong, UserError)) else "failed"] += 1
            job.emit("error", error)
        elif job.cancelled and getattr(result, "finish_reason", "cancelled") == "cancelled":
            self.counts[_COUNT_OF[job.cancelled]] += 1
            job.emit("error", ShuttingDown() if job.cancelled == "shutdown" else Stopped(job.cancelled))
        else:
            self.counts["finished"] += 1
            job.emit("done", result)

    def _next(self) -> Job | None:
        with self.lock:
            while not self.waiting and not self._stopping:
                self.lock.wait()
            if self._stopping:
                return None
            self.running = self.waiting.popleft()
            return self.running

    def _run(self):
        while True:
            job = self._next()
            if job is None:
                return
            start, result, error = time.monotonic(), None, None
            if not job.stopped():  # its deadline may have passed while it waited
                try:
                    result = job.fn(job)
                except Exception as e:  # noqa: BLE001 - handed to the request, which answers with an error
                    error = e
            with self.lock:
                self.running = None
                self._end(job, result, error)
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.monotonic() - start)

    def close(self):
        """End the thread after the running job (the waiting ones are dropped unanswered)."""
        with self.lock:
            self.closing = self._stopping = True
            self.lock.notify()
