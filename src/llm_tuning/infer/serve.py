"""`llm-tuning serve`: an OpenAI-compatible HTTP API over many adapters, and the web playground.

Scheduling: every generation runs on one worker thread, one at a time, in arrival order (worker.Worker).
Switching adapters is global state of the shared base model, so two generations never overlap and a request's
tokens can never mix with another's. The asyncio side only parses, queues and streams: tokens travel from the
worker to the request's asyncio queue, and from there to the client as server-sent events. Prompts are
tokenised on a thread of their own (before queueing), so a long one never holds the generation worker.
The endpoints: completions.py (/v1/completions, /v1/chat/completions), tokenize_api.py (/tokenize, /detokenize,
/version), metrics.py (/metrics and the request log), report_files.py (/reports/).

Abuse (infer/guards.py, docs/serving.md "Limits"): bounded body, queue, request time, connections and
shutdown; a request whose client went away is stopped at its next token, streamed or not.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from ..errors import UserError
from .adapters import AdapterSet
from .api_common import APIError, log_errors, served_model
from .completions import completion_routes
from .guards import BodyLimit, KeyCheck, Limits, make_server
from .metrics import AccessLog, Metrics
from .report_files import report_routes
from .tokenize_api import tokenize_routes
from .worker import Worker
from . import openai_schema as S

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def create_app(adapters: AdapterSet, api_key: str | None = None, reports: str | None = None,
               max_new_tokens: int = 128, limits: Limits | None = None):
    """The FastAPI application: /v1/models, /v1/chat/completions, /v1/completions, /tokenize, /detokenize,
    /version, /metrics, /health, the playground at /, compare reports under /reports/ (only inside the `reports`
    folder)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, Response

    limits = limits or Limits()
    app = FastAPI(title="llm-tuning", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = Worker(limits.max_queue or None)
    app.state.metrics = metrics = Metrics(app.state.worker)
    _error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.receive_timeout)
    if api_key:  # added after, so it runs first: no body is read for a client without the key
        app.add_middleware(KeyCheck, api_key=api_key)
    app.add_middleware(AccessLog, metrics=metrics)  # outermost: it sees every answer, 401 and 413 included
    _model_routes(app, adapters)
    completion_routes(app, adapters, app.state.worker, max_new_tokens, limits.request_timeout, metrics)
    tokenize_routes(app, adapters)

    @app.get("/metrics")  # a route, not a mounted app (which answers /metrics with a redirect to /metrics/)
    async def scrape():
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

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
        param = (err.get("ctx") or {}).get("param") or ".".join(loc) or None  # a whole-body check names its field
        msg = f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", "invalid request")
        code = "unsupported_parameter" if err.get("type") == "unsupported_parameter" else "invalid_value"
        return JSONResponse(S.error_body(msg, param=param, code=code), status_code=400)

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
        served_model(adapters, name)
        return model_card(name)


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
    _request_log_to_stderr()
    make_server(app, cfg.host, cfg.port, limits, app.state.worker).run()


def _request_log_to_stderr() -> None:
    """The request log and the server's errors (logger `llm_tuning.serve`) on stderr, unless the application that
    runs the server already handles that logger."""
    logger = logging.getLogger("llm_tuning.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
