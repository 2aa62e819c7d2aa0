"""The three figures of issue 24, against a real `llm-tuning serve` (default limits) on loopback:

1. latency of a small request behind 15 non-streamed requests for the whole context whose clients hang up
   after 0.3 s;
2. time from SIGTERM to the process's exit with one endless generation running and 10 waiting;
3. time to the 413 status line for a 10 MB body (the body sent in full by a thread meanwhile).

    PYTHONPATH=src python benchmarks/serve_abuse.py --model ../shared/data/models/stories260K-hf
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from serving import Server  # noqa: E402  (the tests' server helper: a subprocess on a free port)


def send(srv, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def status(s: socket.socket) -> int:
    head = s.recv(4096)
    return int(head.split(b" ", 2)[1]) if head else 0


ENDLESS = {"model": "base", "prompt": "Once upon a time", "max_tokens": 10**9, "temperature": 0}
SMALL = {"model": "base", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


def behind_abandoned(srv, n=15) -> float:
    socks = [send(srv, ENDLESS) for _ in range(n)]
    time.sleep(0.3)
    for s in socks:
        s.close()
    t = time.perf_counter()
    code, _ = srv.http("POST", "/v1/completions", SMALL)
    assert code == 200, code
    return time.perf_counter() - t


def sigterm_to_exit(srv, queued=10) -> tuple[float, list[int]]:
    running = send(srv, ENDLESS)
    time.sleep(0.2)
    waiting = [send(srv, ENDLESS) for _ in range(queued)]
    time.sleep(0.5)
    h = srv.http("GET", "/health")[1]
    t = time.perf_counter()
    srv.proc.send_signal(signal.SIGTERM)
    codes = [status(s) for s in waiting] + [status(running)]
    srv.proc.wait(timeout=120)
    return time.perf_counter() - t, codes, h


def to_413(srv, size=10_000_000) -> float:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    t = time.perf_counter()

    def body():
        try:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % size + b"x" * size)
        except OSError:
            pass  # the server answered and closed before the end

    threading.Thread(target=body, daemon=True).start()
    code = status(s)
    took = time.perf_counter() - t
    s.close()
    assert code == 413, code
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with Server("--model", args.model) as srv:
        for i in range(args.repeat):
            print(f"small request behind 15 abandoned: {behind_abandoned(srv):.3f} s", flush=True)
            time.sleep(1)
        print("health:", srv.http("GET", "/health")[1])
        for i in range(args.repeat):
            print(f"10 MB body -> 413: {to_413(srv) * 1000:.1f} ms", flush=True)
    for i in range(args.repeat):
        with Server("--model", args.model) as srv:
            took, codes, h = sigterm_to_exit(srv)
            print(f"SIGTERM -> exit with {h['queued']} queued, running={h['running']}: {took:.2f} s, "
                  f"statuses {codes}, exit code {srv.proc.returncode}", flush=True)


if __name__ == "__main__":
    main()
