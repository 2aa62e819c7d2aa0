"""What the server's endpoints share: the error they answer with, the served model a request names, and the one
thread prompts are tokenised on."""

from __future__ import annotations

import logging

from ..errors import UserError
from .openai_schema import error_body
from .streaming import ContextTooLong
from .worker import QueueFull, ShuttingDown, Stopped

log_errors = logging.getLogger("llm_tuning.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, param, code), headers


def as_api_error(e: Exception, param: str | None) -> APIError:
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


def served_model(adapters, name: str, request=None):
    """The served model `name` (404 naming the others if there is none); noted in the request's state for the
    request log and the metrics."""
    served = adapters.get(name)
    if served is None:
        raise APIError(404, f"the model {name!r} does not exist; this server has: {', '.join(adapters.names)}",
                       param="model", code="model_not_found")
    if request is not None:
        request.state.model = served.name
    return served


def check_token_ids(ids: list[int], vocab: int, param: str) -> None:
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is not in this model's vocabulary (0 to {vocab - 1})", param=param,
                       code="invalid_value")


def vocabulary_size(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


# Prompts are tokenised here, one at a time (a fast tokenizer is not safe to share between threads, and it lets
# go of the GIL while it works), never on the generation worker nor on the event loop.
_TOKENISER = None


async def off_the_loop(fn):
    """fn() on the tokenising thread; its UserError or ContextTooLong are left to the caller."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    global _TOKENISER
    _TOKENISER = _TOKENISER or ThreadPoolExecutor(1, thread_name_prefix="llm-tuning-tokenise")
    return await asyncio.get_running_loop().run_in_executor(_TOKENISER, fn)
