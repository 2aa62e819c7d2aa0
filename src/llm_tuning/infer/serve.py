"""`llm-tuning serve`: an OpenAI-compatible HTTP API over many adapters, and the web playground.

Scheduling: every generation runs on one worker thread, one at a time, in arrival order (worker.Worker).
Switching adapters is global state of the shared base model, so two generations never overlap and a request's
tokens can never mix with another's. The asyncio side only parses, queues and streams: tokens travel from the
worker to the request's asyncio queue, and from there to the client as server-sent events. Prompts are
tokenised on a thread of their own (before queueing), so a long one never holds the generation worker.

Abuse (infer/guards.py, docs/serving.md "Limits"): bounded body, queue, request time, connections and
shutdown; a request whose client went away is stopped at its next token, streamed or not.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from starlette.requests import Request  # at module level: FastAPI resolves the endpoints' annotations here

from ..errors import UserError
from .adapters import AdapterSet
from .sampling import Sampling
from .streaming import ContextTooLong, check_context, context_limit, stream_generate, surely_too_long
from .worker import QueueFull, ShuttingDown, Stopped, Worker
from .guards import BodyLimit, KeyCheck, Limits, make_server
from .report_files import report_routes
from . import openai_schema as S

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
log_errors = logging.getLogger("llm_tuning.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, S.error_body(message, type_, param, code), headers


def _as_api_error(e: Exception, param: str | None) -> APIError:
    """The answer to a request whose work ended in `e`. Only the client's own errors carry their text; a
    failure of the server is logged here and answered without it."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextTooLong):
        return APIError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, UserError):
        return APIError(400, str(e), param=param)
    if isinstance(e, QueueFull):
        return APIError(429, "too many requests are waiting; retry later", "rate_limit_error",
                        code="queue_full", headers={"Retry-After": str(e.retry_after)})
    if isinstance(e, ShuttingDown):
        return APIError(503, "the server is shutting down", "server_error", code="shutting_down")
    if isinstance(e, Stopped) and e.reason == "timeout":
        return APIError(504, "the request ran past --request-timeout", "server_error", code="timeout")
    if isinstance(e, Stopped):  # the client went away: nobody reads this (499: nginx's "client closed request")
        return APIError(499, "the client closed the connection", code="client_closed")
    log_errors.error("generation failed", exc_info=e)
    return APIError(500, "generation failed (the server log has the details)", "server_error")


def create_app(adapters: AdapterSet, api_key: str | None = None, reports: str | None = None,
               max_new_tokens: int = 128, limits: Limits | None = None):
    """The FastAPI application: /v1/models, /v1/chat/completions, /v1/completions, the playground at /,
    compare reports under /reports/ (only inside the `reports` folder)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    limits = limits or Limits()
    app = FastAPI(title="llm-tuning", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = Worker(limits.max_queue or None)
    _error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.receive_timeout)
    if api_key:  # added last, so it runs first: no body is read for a client without the key
        app.add_middleware(KeyCheck, api_key=api_key)
    _model_routes(app, adapters)
    _completion_routes(app, adapters, app.state.worker, max_new_tokens, limits.request_timeout)

    @app.get("/health")
    async def health():
        worker = app.state.worker
        return {"status": "ok", "models": adapters.names, "queued": len(worker.waiting),
                "running": worker.running is not None, **worker.counts}

    @app.get("/")
    async def playground():
        return FileResponse(os.path.join(STATIC, "playground.html"), media_type="text/html")

    report_routes(app, reports)
    return app


# pydantic names the member of a Union in an error's location ("str", "function-after[...]", "list[str]"):
# not part of the parameter's name
_TYPE_TAG = re.compile(r"[\[(]|^(str|int|float|bool|list|dict|none)$")


def _error_handlers(app):
    """Every error as OpenAI's {"error": {message, type, param, code}}; bad bodies and parameters are 400."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        err = (e.errors() or [{}])[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _TYPE_TAG.search(str(x))]
        if err.get("type") == "json_invalid":
            return JSONResponse(S.error_body("the request body is not valid JSON", code="invalid_json"), 400)
        param = ".".join(loc) or None
        msg = f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", "invalid request")
        return JSONResponse(S.error_body(msg, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(S.error_body(str(e.detail), param=None, code=code), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        # the exception's text may hold paths or the client's input: the log gets it, the client does not
        log_errors.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse(S.error_body("internal server error (the server log has the details)",
                                         "server_error"), 500)


def _served(adapters, name):
    served = adapters.get(name)
    if served is None:
        raise APIError(404, f"the model {name!r} does not exist; this server has: {', '.join(adapters.names)}",
                       param="model", code="model_not_found")
    return served


def _model_routes(app, adapters):
    created = int(time.time())

    def model_card(name):
        return {"id": name, "object": "model", "created": created, "owned_by": "llm-tuning",
                "method": adapters.get(name).method}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(n) for n in adapters.names]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        _served(adapters, name)
        return model_card(name)


def _completion_routes(app, adapters, worker, max_new_tokens, request_timeout: float):
    from fastapi.responses import StreamingResponse

    async def run(request, req, chat: bool):
        served = _served(adapters, req.model)
        deadline = time.monotonic() + request_timeout if request_timeout else None
        param = "messages" if chat else "prompt"
        ids = await _prompt_ids(served, adapters.tokenizer, req, chat, param)
        limit = req.max_tokens or (req.max_completion_tokens if chat else None) or max_new_tokens
        sampling = Sampling(limit, req.temperature, req.top_p, tuple(req.stop or ()), req.seed, req.repetition_penalty,
                            req.no_repeat_ngram_size)

        def work(job):
            adapters.activate(served.name)
            check_context(served.model, adapters.tokenizer, ids)  # exact: the adapter's virtual tokens count
            job.emit("start", None)
            return stream_generate(served.model, adapters.tokenizer, ids, sampling,
                                   lambda piece: job.emit("text", piece), job.stopped, lstrip=chat)

        try:
            job = worker.submit(work, deadline)
        except (QueueFull, ShuttingDown) as e:
            raise _as_api_error(e, None) from None
        rid = S.new_id("chatcmpl" if chat else "cmpl")
        kind, value = await _until(request, job, worker, ("done", "error") if not req.stream else ("start", "error"))
        if kind == "error":
            raise _as_api_error(value, param)
        if not req.stream:
            return (S.chat_response if chat else S.completion_response)(rid, req.model, value)
        return StreamingResponse(_events(job, worker, rid, req, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: S.ChatRequest, request: Request):
        return await run(request, req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: S.CompletionRequest, request: Request):
        return await run(request, req, chat=False)


# Prompts are tokenised here, one at a time (a fast tokenizer is not safe to share between threads, and it lets
# go of the GIL while it works), never on the generation worker nor on the event loop.
_TOKENISER = None


async def _prompt_ids(served, tok, req, chat: bool, param: str) -> list[int]:
    """The prompt's token ids, computed off the event loop and off the generation worker; a prompt that
    cannot fit the context whatever it says is refused before it is tokenised."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    global _TOKENISER
    messages = [m.as_dict() for m in req.messages] if chat else None
    chars = sum(len(m["content"]) for m in messages) if chat else len(req.prompt)
    limit = context_limit(served.model, tok)
    if surely_too_long(tok, chars, limit):
        raise APIError(400, f"the prompt is {chars} characters, far more than the {limit} tokens this model "
                            "attends to", param=param, code="context_length_exceeded")

    def encode():
        from ..data.tokenize import encode_prompt
        from .chat import prompt_ids_from_messages

        return (prompt_ids_from_messages(messages, served.template, tok) if chat else encode_prompt(tok, req.prompt))

    _TOKENISER = _TOKENISER or ThreadPoolExecutor(1, thread_name_prefix="llm-tuning-tokenise")
    try:
        ids = await asyncio.get_running_loop().run_in_executor(_TOKENISER, encode)
    except (UserError, ContextTooLong) as e:
        raise _as_api_error(e, param) from None
    if not ids:  # nothing to continue from (an empty prompt, with no bos token)
        raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
    return ids


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


async def _events(job, worker, rid, req, chat):
    """The server-sent events of one streamed answer, ending with `data: [DONE]`."""
    import asyncio
    import json

    def sse(body):
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield sse(S.chunk(rid, req.model, chat, role=True))
        while True:
            timeout = None if job.deadline is None else max(0.0, job.deadline - time.monotonic()) + 1.0
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout)
            except asyncio.TimeoutError:
                worker.stop(job, "timeout")
                kind, value = "error", Stopped("timeout")
            if kind == "text":
                yield sse(S.chunk(rid, req.model, chat, text=value))
            elif kind == "done":
                yield sse(S.chunk(rid, req.model, chat, finish=S.finish_reason(value)))
                if req.include_usage():
                    yield sse(S.chunk(rid, req.model, chat, usage_of=value))
                break
            elif kind == "error":
                yield sse(_as_api_error(value, None).body)
                break
        yield "data: [DONE]\n\n"
    finally:
        worker.stop(job, "client")  # the client hung up (or we are done): the worker stops at the next token


def serve(cfg, log=print) -> None:
    """Load the base and every adapter, then answer HTTP until interrupted."""
    if cfg.reports and not os.path.isdir(cfg.reports):
        raise UserError(f"--reports {cfg.reports}: not a folder")
    api_key = cfg.api_key or os.environ.get("LLM_TUNING_API_KEY") or None
    adapters = AdapterSet(cfg.model, cfg.adapter, cfg.precision, cfg.quantization, cfg.template,
                          cfg.trust_remote_code, log=log)
    limits = Limits.from_config(cfg)
    app = create_app(adapters, api_key, cfg.reports, cfg.max_new_tokens, limits)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log(f"warning: listening on {cfg.host} without --api-key: anyone who can reach this port can use it")
    log(f"serving {', '.join(adapters.names)} at http://{cfg.host}:{cfg.port}/v1 (playground: "
        f"http://{cfg.host}:{cfg.port}/)")
    sys.stdout.flush()
    make_server(app, cfg.host, cfg.port, limits, app.state.worker).run()
