"""What an operator sees of `llm-tuning serve`: Prometheus metrics at GET /metrics (the official prometheus_client,
a registry per application, vLLM's metric names and buckets with `llm_tuning:` for `vllm:`), and one log line
per request on the `llm_tuning.serve` logger (no prompt or answer text).
"""

from __future__ import annotations

import logging
import time

access_log = logging.getLogger("llm_tuning.serve")

# vLLM's buckets (v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


class Metrics:
    """The server's metrics in a registry of its own (so that several applications in one process never clash);
    the queue's gauges are read from the worker when scraped."""

    def __init__(self, worker):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("llm_tuning:requests", "HTTP requests answered, by endpoint, model and status",
                                ["endpoint", "model_name", "status"], registry=r)
        self.success = Counter("llm_tuning:request_success", "Answers (choices) finished, by reason",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("llm_tuning:prompt_tokens", "Prompt tokens processed", ["model_name"],
                                     registry=r)
        self.generation_tokens = Counter("llm_tuning:generation_tokens", "Tokens generated", ["model_name"],
                                         registry=r)
        self.ttft = Histogram("llm_tuning:time_to_first_token_seconds", "From a request's arrival to its first "
                              "generated token", ["model_name"], buckets=TTFT_BUCKETS, registry=r)
        self.queue_time = Histogram("llm_tuning:request_queue_time_seconds", "From a request's arrival until the "
                                    "generation worker takes it", ["model_name"], buckets=REQUEST_BUCKETS, registry=r)
        self.latency = Histogram("llm_tuning:e2e_request_latency_seconds", "From a request's arrival to the last "
                                 "byte of its answer (streams included)", ["model_name"], buckets=REQUEST_BUCKETS,
                                 registry=r)
        Gauge("llm_tuning:num_requests_waiting", "Requests queued for the generation worker",
              registry=r).set_function(lambda: len(worker.waiting))
        Gauge("llm_tuning:num_requests_running", "Requests the generation worker runs (0 or 1)",
              registry=r).set_function(lambda: int(worker.running is not None))

    def answered(self, model: str, rows: list, counts: dict, arrival: float, started: float | None) -> None:
        """A completion request's answer: its tokens, reasons, time to first token and time in the queue."""
        self.prompt_tokens.labels(model).inc(counts["prompt_tokens"])
        self.generation_tokens.labels(model).inc(counts["completion_tokens"])
        for c in rows:
            self.success.labels(model, c.finish_reason).inc()
        firsts = [c.first_token_at for c in rows if c.first_token_at is not None]
        if firsts:
            self.ttft.labels(model).observe(min(firsts) - arrival)
        if started is not None:
            self.queue_time.labels(model).observe(max(0.0, started - arrival))

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class AccessLog:
    """ASGI middleware, outermost: when the last byte of an answer is sent (a stream's too), one line on the
    `llm_tuning.serve` logger (method, path, model, status, prompt and completion tokens, seconds) and the request
    counted. The routes put the model and the token counts in the request's state."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), [0]
        state = scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, state, status[0], time.monotonic() - start)

        await self.app(scope, receive, sending)

    def _log(self, scope, state, status: int, seconds: float) -> None:
        model = state.get("model")
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unrouted"  # a route's pattern: unknown paths share one label
        self.metrics.requests.labels(endpoint, model or "", str(status)).inc()
        if model is not None:
            self.metrics.latency.labels(model).observe(seconds)
        access_log.info("%s %s model=%s status=%d prompt_tokens=%s completion_tokens=%s seconds=%.3f",
                        scope.get("method"), scope.get("path"), model or "-", status, state.get("prompt_tokens", "-"),
                        state.get("completion_tokens", "-"), seconds)
