"""/v1/completions and /v1/chat/completions: a request's prompts (a string, strings, token ids, or the chat's
messages) times `n` become rows, decoded on the generation worker as one job, BATCH rows per forward pass
(streaming.stream_batch); the answer is one choice per row, whole or streamed as server-sent events.

Log-probabilities (`logprobs` / `top_logprobs`, `echo`) come from the very forward passes that decode (the prompt's
from the one that starts decoding it), so they are the engine's own figures; the tests compare them with
`llm-tuning eval`'s loss on the same text.
"""

from __future__ import annotations

import dataclasses
import time

from starlette.requests import Request  # at module level: FastAPI resolves the endpoints' annotations here

from ..errors import UserError
from . import openai_answers as A
from . import openai_schema as S
from .api_common import APIError, as_api_error, check_token_ids, off_the_loop, served_model, vocabulary_size
from .sampling import Sampling
from .streaming import ContextTooLong, check_context, context_limit, stream_batch, surely_too_long
from .worker import QueueFull, ShuttingDown, Stopped

BATCH = 8  # rows decoded together (a request's prompts and samples; one adapter, so they can share a batch)


class Answers(list):
    """A request's rows as they ended; "cancelled" when one was stopped (the client went away, its deadline)."""

    finish_reason = "done"


def completion_routes(app, adapters, worker, max_new_tokens: int, request_timeout: float, metrics):
    from fastapi.responses import StreamingResponse

    async def run(request, req, chat: bool):
        arrival = time.monotonic()
        served = served_model(adapters, req.model, request)
        deadline = arrival + request_timeout if request_timeout else None
        prompts = await _prompts(served, adapters.tokenizer, req, chat)
        rows = [ids for ids, _ in prompts for _ in range(req.n)]
        length = req.answer_length()
        sampling = Sampling(max_new_tokens if length is None else length, req.temperature, req.top_p,
                            tuple(req.stop or ()), req.seed, req.repetition_penalty, req.no_repeat_ngram_size)
        echo = not chat and req.echo
        try:
            job = worker.submit(_work(adapters, served, rows, sampling, req.top_k(), echo, chat, req.stream),
                                deadline)
        except (QueueFull, ShuttingDown) as e:
            raise as_api_error(e, None) from None
        rid = A.new_id("chatcmpl" if chat else "cmpl")
        echoed = [text for _, text in prompts] if echo else None
        done = _Done(request, metrics, served.name, arrival, job, req.n)
        kind, value = await _until(request, job, worker, ("done", "error") if not req.stream else ("start", "error"))
        if kind == "error":
            raise as_api_error(value, "messages" if chat else "prompt")
        if req.stream:
            return StreamingResponse(_events(job, worker, rid, req, chat, len(rows), echoed, done),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        done(value)
        if chat:
            return A.chat_response(rid, req.model, value, req.n, req.top_k() is not None)
        return A.completion_response(rid, req.model, value, req.n, echoed, req.top_k() is not None)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: S.ChatRequest, request: Request):
        return await run(request, req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: S.CompletionRequest, request: Request):
        return await run(request, req, chat=False)


def _work(adapters, served, rows, sampling, top_k, echo: bool, chat: bool, stream: bool):
    """The job the worker runs: every row decoded, BATCH at a time; streamed pieces go out as events."""
    tok = adapters.tokenizer

    def work(job):
        adapters.activate(served.name)
        for ids in rows:
            check_context(served.model, tok, ids)  # exact: the adapter's virtual tokens count
        job.emit("start", None)
        out = Answers()
        for at in range(0, len(rows), BATCH):
            seed = sampling.seed
            if seed is not None and at:  # each batch draws its own samples (a seed is at most 64 bits)
                seed = (seed + at) % 2**64
            on_text = on_prompt = None
            if stream:
                on_text = lambda i, piece, entries, at=at: job.emit("text", (at + i, piece, entries))  # noqa: E731
                on_prompt = lambda i, entries, at=at: job.emit("prompt", (at + i, entries))  # noqa: E731
            out += stream_batch(served.model, tok, rows[at:at + BATCH], dataclasses.replace(sampling, seed=seed),
                                on_text, job.stopped, lstrip=chat, logprobs=top_k, echo=echo, on_prompt=on_prompt)
            if job.stopped():
                break
        if len(out) < len(rows) or any(c.finish_reason == "cancelled" for c in out):
            out.finish_reason = "cancelled"
        return out

    return work


async def _prompts(served, tok, req, chat: bool) -> list[tuple[list[int], str | None]]:
    """Each prompt's token ids and its text (what echo gives back), computed off the event loop and off the
    generation worker. Token ids are taken as they are (no bos added), as vLLM does; a text that cannot fit
    the context whatever it says is refused before it is tokenised."""
    from ..data.tokenize import encode_prompt
    from .chat import prompt_ids_from_messages

    param = "messages" if chat else "prompt"
    limit = context_limit(served.model, tok)
    messages = [m.as_dict() for m in req.messages] if chat else None
    items = ["".join(m["content"] for m in messages)] if chat else req.prompts()
    for p in items:
        if isinstance(p, str) and surely_too_long(tok, len(p), limit):
            raise APIError(400, f"the prompt is {len(p)} characters, far more than the {limit} tokens this model "
                                "attends to", param=param, code="context_length_exceeded")
        if not isinstance(p, str):
            check_token_ids(p, vocabulary_size(served.model), param)

    def encode():
        if chat:
            return [(prompt_ids_from_messages(messages, served.template, tok), None)]
        return [(encode_prompt(tok, p), p) if isinstance(p, str) else (list(p), tok.decode(p)) for p in items]

    try:
        prompts = await off_the_loop(encode)
    except (UserError, ContextTooLong) as e:
        raise as_api_error(e, param) from None
    if any(not ids for ids, _ in prompts):  # nothing to continue from (an empty prompt, with no bos token)
        raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
    return prompts


class _Done:
    """What a request's end records: its token counts in the request log, and the metrics."""

    def __init__(self, request, metrics, model: str, arrival: float, job, n: int):
        self.request, self.metrics, self.model = request, metrics, model
        self.arrival, self.job, self.n = arrival, job, n

    def __call__(self, rows) -> dict:
        counts = A.usage(rows, self.n)
        self.request.state.prompt_tokens = counts["prompt_tokens"]
        self.request.state.completion_tokens = counts["completion_tokens"]
        if self.metrics is not None:
            self.metrics.answered(self.model, rows, counts, self.arrival, self.job.started)
        return counts


async def _until(request, job, worker, kinds: tuple):
    """The job's first event of one of `kinds` (others are dropped). The job is stopped, and ("error",
    Stopped(...)) returned, if first the client goes away or the request's deadline passes (plus a second, so
    that the worker, which checks it after every token, usually says so itself)."""
    import asyncio

    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def wanted():
        while True:
            kind, value = await job.events.get()
            if kind in kinds:
                return kind, value

    timeout = None if job.deadline is None else max(0.0, job.deadline - time.monotonic()) + 1.0
    got, left = asyncio.ensure_future(wanted()), asyncio.ensure_future(gone())
    done, _ = await asyncio.wait({got, left}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in (got, left):
        task.cancel()
    if got in done:
        return got.result()
    reason = "client" if left in done else "timeout"
    worker.stop(job, reason)
    return "error", Stopped(reason)


async def _events(job, worker, rid, req, chat: bool, choices: int, echoed, done):
    """The server-sent events of one streamed answer, ending with `data: [DONE]`: per choice, the chat role or the
    echoed prompt first, then its pieces of text (each with its tokens' log-probabilities when asked), then its
    finish reason; the usage last when asked."""
    import asyncio
    import json

    def sse(body):
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    scoring = req.top_k() is not None
    offsets = [0] * choices  # text_offset goes on from the choice's last chunk

    def logprobs(i, entries):
        if not scoring:
            return None
        if chat:
            return A.chat_logprobs(entries)
        out = A.completion_logprobs(entries, offsets[i])
        offsets[i] += sum(len(e.text) for e in entries)
        return out

    def chunk(i=0, **kw):
        return sse(A.chunk(rid, req.model, chat, i, **kw))

    try:
        for i in range(choices):
            if chat:
                yield chunk(i, role=True)
            elif echoed is not None and not scoring:  # with log-probabilities, the echo comes with them
                yield chunk(i, text=echoed[i // req.n])
        while True:
            timeout = None if job.deadline is None else max(0.0, job.deadline - time.monotonic()) + 1.0
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout)
            except asyncio.TimeoutError:
                worker.stop(job, "timeout")
                kind, value = "error", Stopped("timeout")
            if kind == "prompt":
                i, entries = value
                yield chunk(i, text=echoed[i // req.n], logprobs=logprobs(i, entries))
            elif kind == "text":
                i, piece, entries = value
                yield chunk(i, text=piece, logprobs=logprobs(i, entries))
            elif kind == "done":
                for i, c in enumerate(value):
                    yield chunk(i, finish=A.finish_reason(c))
                counts = done(value)
                if req.include_usage():
                    yield sse(A.chunk(rid, req.model, chat, usage_of=counts))
                break
            elif kind == "error":
                yield sse(as_api_error(value, None).body)
                break
        yield "data: [DONE]\n\n"
    finally:
        worker.stop(job, "client")  # the client hung up (or we are done): the worker stops at the next token
