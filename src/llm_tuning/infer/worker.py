"""One generation at a time: `Worker` runs jobs on a single thread, in arrival order, and hands their events to
asyncio consumers. An adapter switch is global state of the shared base model, so two generations must never
overlap.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError
from .streaming import ContextTooLong


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
    started: float | None = None  # time.monotonic() when the worker took it off the queue
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
            self.running.started = time.monotonic()
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
