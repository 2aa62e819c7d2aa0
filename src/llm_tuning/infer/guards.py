"""What keeps `llm-tuning serve` standing when clients misbehave: the limits, and the few pieces no library
provides (uvicorn gives the keep-alive timeout, the header size bound, the connection bound and the graceful
shutdown bound; the rest is here).

- `BodyLimit` (ASGI middleware): a body over `max_body_bytes` is answered 413 before it is read or parsed
  (from Content-Length, or while it arrives); a body that does not arrive within `receive_timeout` gets 408.
- `KeyCheck` (ASGI middleware): the API and the reports need `Authorization: Bearer KEY`; there is no cookie.
- `protocol_class`: uvicorn's h11 protocol with a deadline for the request head (uvicorn's own
  `timeout_keep_alive` only runs between requests, so a connection that never sends a complete request line
  and headers would stay open for ever), and a lingering close, so that a client still sending the body a 413
  refused reads the 413 instead of a connection reset.
- `Server`: uvicorn's server whose first SIGTERM/SIGINT also empties the generation queue (each waiting
  request answered 503) and gives the running generation `shutdown_timeout` seconds; a second signal of
  either kind exits at once (uvicorn forces only on a second SIGINT).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass

from ..config.commands import ServeConfig
from ..options import declared
from . import openai_schema as S


@dataclass
class Limits:
    """The server's bounds: the typed slice of the `serve` options of the same names, their defaults the options'
    (0: no bound where allowed)."""

    max_queue: int = declared(ServeConfig, "max_queue")  # generations waiting behind the running one; more get 429
    request_timeout: float = declared(ServeConfig, "request_timeout")  # from a request's arrival to the end of its answer
    max_body_bytes: int = declared(ServeConfig, "max_body_bytes")
    receive_timeout: float = declared(ServeConfig, "receive_timeout")  # a request's head (from connection or last answer), body
    keep_alive_timeout: float = declared(ServeConfig, "keep_alive_timeout")  # uvicorn's timeout_keep_alive
    max_connections: int = declared(ServeConfig, "max_connections")  # uvicorn's limit_concurrency: past it, requests get 503
    shutdown_timeout: float = declared(ServeConfig, "shutdown_timeout")  # after SIGTERM, for the running generation to finish

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


async def _send_error(send, status: int, message: str, code: str, headers=()) -> None:
    body = json.dumps(S.error_body(message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the whole body (at most `max_bytes`, within `timeout` seconds) before the application sees it, and
    hands it on in one piece; after it, `receive` is the server's own (so a disconnect is still noticed)."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(send)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout or None)
        except asyncio.TimeoutError:
            return await _send_error(send, 408, f"the request body did not arrive within {self.timeout:g} s",
                                     "request_timeout", [(b"connection", b"close")])
        if body is None:
            return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send):
        # the rest of the body is never read: the connection is closed after this answer
        await _send_error(send, 413, f"the request body is over {self.max_bytes} bytes (--max-body-bytes)",
                          "request_too_large", [(b"connection", b"close")])


class KeyCheck:
    """With a key: /v1/..., /tokenize, /detokenize and /reports... need `Authorization: Bearer KEY`, compared in
    constant time (/health, /metrics, /version and the playground page do not)."""

    GUARDED = ("/v1/", "/reports", "/tokenize", "/detokenize")

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(self.GUARDED):
            given = dict(scope["headers"]).get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                why = "wrong API key" if token else "missing API key (send the header Authorization: Bearer KEY)"
                return await _send_error(send, 401, why, "invalid_api_key")
        await self.app(scope, receive, send)


LINGER_BYTES = 64 * 1024 * 1024  # at least this much of an unread body is read and discarded after its answer


def protocol_class(head_timeout: float, linger_bytes: int = LINGER_BYTES):
    """uvicorn's h11 protocol, with two bounds uvicorn lacks.

    - A connection whose request head has not arrived `head_timeout` seconds after it opened or after its last
      answer is closed (a request being answered is never cut).
    - Lingering close (nginx's `lingering_close`): when an answer (413, 408) closes a connection whose body the
      client is still sending, closing the socket at once would make the kernel reset it, and a client that
      writes its whole body before reading gets the reset, not the answer. So the answer is followed by a FIN
      (half-close), the rest of the body is read and discarded, and the socket closes at the client's own end,
      after `linger_bytes` more bytes, or after `head_timeout` seconds, whichever comes first."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _head_timer = None
        _linger_timer = None
        _lingering = False
        _discarded = 0

        def connection_made(self, transport):
            super().connection_made(transport)
            self._close_now = transport.close
            transport.close = self._close  # uvicorn closes through the transport after a Connection: close answer
            self._arm()

        def _close(self):
            sending_body = self.conn.their_state is h11.SEND_BODY
            if self._lingering or not sending_body or self.transport.is_closing() or not self.transport.can_write_eof():
                return self._close_now()
            self._lingering = True
            self.transport.write_eof()  # after the answer already written: the client can read all of it
            self.transport.resume_reading()  # uvicorn may have paused reading the body nobody read
            self._linger_timer = self.loop.call_later(head_timeout or 10.0, self._close_now)

        def data_received(self, data):
            if not self._lingering:
                return super().data_received(data)
            self._discarded += len(data)  # never parsed
            if self._discarded > linger_bytes:
                self._close_now()

        def eof_received(self):
            if self._lingering:
                self._close_now()
                return False
            return super().eof_received()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc):
            for timer in (self._head_timer, self._linger_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def _arm(self):
            if self._head_timer is not None:
                self._head_timer.cancel()
            if head_timeout:
                self._head_timer = self.loop.call_later(head_timeout, self._head_late)

        def _head_late(self):
            # no request in progress (none yet, or the last one answered): the head never came in time
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


def make_server(app, host: str, port: int, limits: Limits, worker):
    """The uvicorn server with the limits: uvicorn's own settings where they exist."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if self.should_exit:  # the second signal: do not wait for anything
                self.force_exit = True
            else:
                worker.drain(limits.shutdown_timeout)
            super().handle_exit(sig, frame)

    linger = max(LINGER_BYTES, limits.max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            http=protocol_class(limits.receive_timeout, linger),
                            timeout_keep_alive=limits.keep_alive_timeout, h11_max_incomplete_event_size=16 * 1024,
                            limit_concurrency=limits.max_connections or None,
                            # a backstop: the worker stops the running generation after shutdown_timeout
                            timeout_graceful_shutdown=limits.shutdown_timeout + 2)
    return Server(config)

