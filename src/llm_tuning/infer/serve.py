"""`llm-tuning serve`: an OpenAI-compatible HTTP API over many adapters, and the web playground.

Scheduling: every generation runs on one worker thread, one at a time, in arrival order (engine.Worker).
Switching adapters is global state of the shared base model, so two generations never overlap and a request's
tokens can never mix with another's. The asyncio side only parses, queues and streams: tokens travel from the
worker to the request's asyncio queue, and from there to the client as server-sent events.
"""

from __future__ import annotations

import hmac
import os
import re
import sys
import time

from ..errors import UserError
from .adapters import AdapterSet
from .engine import ContextTooLong, Sampling, Worker, check_context, stream_generate
from . import openai_schema as S

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
KEY_COOKIE = "llm_tuning_key"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, S.error_body(message, type_, param, code)


def _as_api_error(e: Exception, param: str) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextTooLong):
        return APIError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, UserError):
        return APIError(400, str(e), param=param)
    return APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error")


def create_app(adapters: AdapterSet, api_key: str | None = None, reports: str | None = None,
               max_new_tokens: int = 128):
    """The FastAPI application: /v1/models, /v1/chat/completions, /v1/completions, the playground at /,
    compare reports under /reports/ (only inside the `reports` folder)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    app = FastAPI(title="llm-tuning", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = Worker()
    _error_handlers(app)
    _key_check(app, api_key)
    _model_routes(app, adapters)
    _completion_routes(app, adapters, app.state.worker, max_new_tokens)

    @app.get("/health")
    async def health():
        worker = app.state.worker
        return {"status": "ok", "models": adapters.names, "queued": worker.jobs.qsize(), **worker.counts}

    @app.get("/")
    async def playground():
        return FileResponse(os.path.join(STATIC, "playground.html"), media_type="text/html")

    _report_routes(app, reports, FileResponse)
    return app


def _error_handlers(app):
    """Every error as OpenAI's {"error": {message, type, param, code}}; bad bodies and parameters are 400."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        err = (e.errors() or [{}])[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
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
        return JSONResponse(S.error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), 500)


def _key_check(app, api_key: str | None):
    """With a key: the API and the reports need `Authorization: Bearer KEY` (or the playground's cookie)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        path = request.url.path
        if api_key and (path.startswith("/v1/") or path.startswith("/reports")):
            given = request.headers.get("authorization", "")
            given = given[7:].strip() if given.lower().startswith("bearer ") else request.cookies.get(KEY_COOKIE, "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                why = "wrong API key" if given else "missing API key (send the header Authorization: Bearer KEY)"
                return JSONResponse(S.error_body(why, code="invalid_api_key"), status_code=401)
        return await call_next(request)


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


def _completion_routes(app, adapters, worker, max_new_tokens):
    from fastapi.responses import StreamingResponse

    async def run(req, chat: bool):
        served = _served(adapters, req.model)
        limit = req.max_tokens or (req.max_completion_tokens if chat else None) or max_new_tokens
        sampling = Sampling(limit, req.temperature, req.top_p, tuple(req.stop or ()), req.seed)
        messages = [m.as_dict() for m in req.messages] if chat else None
        param = "messages" if chat else "prompt"

        def work(job):
            from ..data.tokenize import encode_prompt
            from .chat import prompt_ids_from_messages

            adapters.activate(served.name)
            tok = adapters.tokenizer
            ids = (prompt_ids_from_messages(messages, served.template, tok) if chat
                   else encode_prompt(tok, req.prompt))
            check_context(served.model, tok, ids)
            job.emit("start", None)
            return stream_generate(served.model, tok, ids, sampling, lambda piece: job.emit("text", piece),
                                   lambda: job.cancelled, lstrip=chat)

        job = worker.submit(work)
        kind, value = await job.events.get()
        if kind == "error":
            raise _as_api_error(value, param)
        rid = S.new_id("chatcmpl" if chat else "cmpl")
        if not req.stream:
            while kind != "done":
                kind, value = await job.events.get()
                if kind == "error":
                    raise _as_api_error(value, param)
            return (S.chat_response if chat else S.completion_response)(rid, req.model, value)
        return StreamingResponse(_events(job, rid, req, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: S.ChatRequest):
        return await run(req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: S.CompletionRequest):
        return await run(req, chat=False)


async def _events(job, rid, req, chat):
    """The server-sent events of one streamed answer, ending with `data: [DONE]`."""
    import json

    def sse(body):
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield sse(S.chunk(rid, req.model, chat, role=True))
        while True:
            kind, value = await job.events.get()
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
        job.cancelled = True  # the client hung up (or we are done): the worker stops at the next token


def _report_routes(app, reports: str | None, FileResponse):
    """compare reports: /reports/index.json lists them, /reports/PATH serves a file under the reports folder."""
    root = os.path.realpath(reports) if reports else None

    @app.get("/reports/index.json")
    async def report_index():
        return {"root": bool(root), "reports": list_reports(root) if root else []}

    @app.get("/reports/{path:path}")
    async def report_file(path: str):
        if not root:
            raise APIError(404, "no reports folder: start the server with --reports DIR", code="not_found")
        full = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root:
            raise APIError(404, f"{path}: not inside the reports folder", code="not_found")
        if os.path.isdir(full):
            full = os.path.join(full, "report.html")
        if not os.path.isfile(full):
            raise APIError(404, f"{path}: no such report file", code="not_found")
        return FileResponse(full)


def list_reports(root: str, depth: int = 3) -> list[dict]:
    """Folders under `root` (at most `depth` levels down) holding a compare report.html, with their titles."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel.count(os.sep) >= depth:
            dirs[:] = []
        dirs.sort()
        if "report.html" in files:
            with open(os.path.join(folder, "report.html"), encoding="utf-8", errors="replace") as f:
                m = re.search(r"<title>(.*?)</title>", f.read(4096), re.S)
            found.append({"path": "" if rel == "." else rel.replace(os.sep, "/"),
                          "title": m.group(1).strip() if m else rel})
    return found


def serve(cfg, log=print) -> None:
    """Load the base and every adapter, then answer HTTP until interrupted."""
    import uvicorn

    if cfg.reports and not os.path.isdir(cfg.reports):
        raise UserError(f"--reports {cfg.reports}: not a folder")
    api_key = cfg.api_key or os.environ.get("LLM_TUNING_API_KEY") or None
    adapters = AdapterSet(cfg.model, cfg.adapter, cfg.precision, cfg.quantization, cfg.template,
                          cfg.trust_remote_code, log=log)
    app = create_app(adapters, api_key, cfg.reports, cfg.max_new_tokens)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log(f"warning: listening on {cfg.host} without --api-key: anyone who can reach this port can use it")
    log(f"serving {', '.join(adapters.names)} at http://{cfg.host}:{cfg.port}/v1 (playground: "
        f"http://{cfg.host}:{cfg.port}/)")
    sys.stdout.flush()
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
