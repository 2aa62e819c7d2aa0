"""`llm-tuning serve` driven as an abusive client would (issue 24), over loopback only: files outside the
reports, abandoned and queued work, bodies too large, connections that never finish, SIGTERM under load, input
that used to make 500s, and the API key with URL-special characters. Every loop is bounded in count and time.
"""

import json
import os
import signal
import socket
import threading
import time

import pytest

from serving import Server, trained_adapters

KEY = "k/e+y=%2F"  # every character a cookie or a URL would encode
LIMITS = ["--max-queue", "3", "--request-timeout", "3", "--max-body-bytes", "1000000", "--receive-timeout", "2",
          "--keep-alive-timeout", "1", "--shutdown-timeout", "2"]
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
ENDLESS = 10**9  # max_tokens: until the context's end (2048 positions of the tiny Llama, ~30 s here)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """R/good/report.html, and R/run2/report.html a symbolic link to a file outside R."""
    base = tmp_path_factory.mktemp("abuse-reports")
    (base / "R" / "good").mkdir(parents=True)
    (base / "R" / "run2").mkdir()
    (base / "R" / "good" / "report.html").write_text("<title>good one</title><h1>good</h1>")
    (base / "secret.html").write_text("<title>SECRET TITLE</title>outside the reports")
    os.symlink(base / "secret.html", base / "R" / "run2" / "report.html")
    return base / "R"


@pytest.fixture(scope="module")
def args(tiny_models, tmp_path_factory):
    adapters = trained_adapters(tiny_models, tmp_path_factory, ("lora", "prompt"))
    return ["--model", tiny_models["llama"], "--adapter", f"lora={adapters['lora']}",
            "--adapter", f"prompt={adapters['prompt']}"]


@pytest.fixture(scope="module")
def server(args, reports):
    with Server(*args, "--reports", str(reports), *LIMITS, api_key=KEY) as s:
        yield s


def health(server):
    return server.http("GET", "/health")[1]


def wait_health(server, done, seconds=30):
    """/health once `done(health)` holds, polled for at most `seconds`."""
    deadline = time.time() + seconds
    while True:
        h = health(server)
        if done(h) or time.time() > deadline:
            return h
        time.sleep(0.2)


def raw_request(server, body: dict, path="/v1/completions") -> socket.socket:
    """A request sent on a socket of its own, whose answer nobody reads until the caller does."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def status_of(sock: socket.socket) -> int:
    head = sock.recv(4096)
    return int(head.split(b" ", 2)[1]) if head else 0


def endless(model="base", stream=False):
    return {"model": model, "prompt": "很久以前", "max_tokens": ENDLESS, "temperature": 0, "stream": stream}


def test_1_no_file_outside_the_reports_is_served(server):
    assert server.http("GET", "/reports/good/")[0] == 200
    for path in ("/reports/run2/", "/reports/run2", "/reports/run2/report.html", "/reports/%2e%2e/secret.html",
                 "/reports/good/%2e%2e%2f%2e%2e%2fsecret.html", "/reports/%00", "/reports/good/%00report.html"):
        status, body = server.http("GET", path)
        assert status == 404 and "outside the reports" not in str(body), (path, body)
    index = server.http("GET", "/reports/index.json")[1]
    assert [r["path"] for r in index["reports"]] == ["good"] and "SECRET" not in json.dumps(index)


def test_2_abandoned_requests_are_cancelled_and_the_queue_is_bounded(server):
    """Non-streamed requests whose clients hang up are stopped (running or waiting); past --max-queue 3 waiting,
    429 with Retry-After through the openai client; /health counts them apart from failures."""
    import openai

    before = health(server)
    socks = [raw_request(server, endless(m)) for m in ("base", "lora", "prompt", "base")]  # 1 runs, 3 wait
    assert wait_health(server, lambda h: h["queued"] == 3, 10)["queued"] == 3
    with pytest.raises(openai.RateLimitError) as e:
        server.client().completions.create(model="base", prompt="x", max_tokens=2)
    assert int(e.value.response.headers["retry-after"]) >= 1
    time.sleep(0.3)
    for s in socks:
        s.close()
    now = wait_health(server, lambda h: h["cancelled"] >= before["cancelled"] + 4, 15)
    assert now["cancelled"] == before["cancelled"] + 4 and now["finished"] == before["finished"]
    assert now["rejected"] == before["rejected"] + 1 and now["failed"] == 0 and now["queued"] == 0
    t = time.time()
    r = server.client().completions.create(model="lora", prompt="很久以前", max_tokens=4, temperature=0)
    assert r.choices[0].text and time.time() - t < 5  # nothing left running ahead of it


def test_2_a_request_past_its_deadline_is_stopped(server):
    """--request-timeout 3: requests behind two endless answers (each ~5 s here, stopped at 3 s) get 504 at
    their deadline, or a streamed one an error event, and are counted as timed out."""
    import openai

    before = health(server)
    running = [raw_request(server, endless(m)) for m in ("lora", "base")]
    streamed = []

    def stream():  # 504 if it is still waiting at its deadline, else an error event ends the stream
        try:
            for _ in server.client().completions.create(**endless("prompt", stream=True)):
                pass
        except openai.APIStatusError as e:
            streamed.append(e.status_code)
        except openai.APIError as e:
            streamed.append(504 if "request-timeout" in e.message else e.message)

    thread = threading.Thread(target=stream)
    thread.start()
    t = time.time()
    status, body = server.http("POST", "/v1/completions", endless("prompt"))
    assert status == 504 and body["error"]["code"] == "timeout" and 2.5 < time.time() - t < 10
    thread.join(timeout=10)
    assert streamed == [504]
    now = wait_health(server, lambda h: h["timed_out"] >= before["timed_out"] + 2 and not h["running"], 20)
    assert now["timed_out"] >= before["timed_out"] + 2 and now["failed"] == 0
    for s in running:
        s.close()


def test_3_a_body_over_the_limit_is_413_before_it_is_read(server):
    """--max-body-bytes 1000000: 10 MB gets 413 at once (from Content-Length, the body unread), a chunked body
    when it passes the limit; a prompt too long to fit is refused without tokenising it."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    t = time.time()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH +
              b"Content-Length: 10000000\r\n\r\n")
    assert status_of(s) == 413 and time.time() - t < 3
    s.close()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + AUTH + b"\r\n")
    chunk = b"x" * 65536
    try:
        for _ in range(40):  # 2.6 MB at most
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass  # the server answered and closed before the end
    assert status_of(s) == 413
    s.close()
    t = time.time()
    big = json.dumps({"model": "base", "prompt": "苹" * 300_000}, ensure_ascii=False).encode()  # 900 kB
    status, body = server.http("POST", "/v1/completions", raw=big)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded" and time.time() - t < 5


def send_all_then_read(server, head: bytes, body: bytes) -> tuple[str, int]:
    """A client that writes its whole request before reading anything (as curl does with a small upload window):
    ("sent", status) or the error that cut its writing."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    try:
        s.sendall(head + body)
        sent = "sent"
    except OSError as e:
        sent = repr(e)
    try:
        return sent, status_of(s)
    except OSError as e:
        return sent, repr(e)
    finally:
        s.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_3_a_client_that_sends_its_whole_body_first_reads_its_413(server, framing):
    """12 MB over --max-body-bytes 1000000, all written before the client reads: the server answers 413 early,
    then half-closes and reads the rest away (lingering close), so the client's writing is never reset and it
    reads the 413; the server goes on answering."""
    body = b'{"model": "base", "prompt": "' + b"a" * 12_000_000 + b'"}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH
    if framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                        for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    else:
        head += b"Content-Length: %d\r\n\r\n" % len(body)
    assert send_all_then_read(server, head, body) == ("sent", 413)
    assert server.http("GET", "/health")[0] == 200


def test_4_connections_that_never_finish_a_request_are_closed(server):
    """--receive-timeout 2: idle connections, half-sent headers and a body that stops coming are all closed
    (the body with 408) within a few seconds; a request in progress is not."""
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    half = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    for s in half:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n" + AUTH + b"\r\n{\"model\"")
    deadline = time.time() + 10
    for s in idle + half:
        s.settimeout(max(0.1, deadline - time.time()))
        assert s.recv(100) == b""  # closed by the server (a timeout here raises)
        s.close()
    slow.settimeout(max(0.1, deadline - time.time()))
    assert status_of(slow) == 408
    slow.close()
    assert server.http("GET", "/health")[0] == 200


def test_6_client_input_never_makes_a_500(server):
    """Input that used to make 500s with exception text is a 400 naming its param; none counts as failed."""
    chat = {"model": "lora", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [({**chat, "seed": 2**64, "temperature": 1}, "seed"),
             ({**chat, "messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
             ({**chat, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
              "messages.0.content"),
             ({**chat, "stop": ["\ud800"]}, "stop"), ({**chat, "model": "\ud800"}, "model")]
    for body, param in cases:
        status, got = server.http("POST", "/v1/chat/completions", body)
        assert status == 400 and got["error"]["param"] == param, (body, got)
    status, got = server.http("POST", "/v1/completions", {"model": "base", "prompt": "", "max_tokens": 2})
    assert status == 400 and got["error"]["param"] == "prompt"
    status, got = server.http("POST", "/v1/completions", {"model": "base", "prompt": "x\ud800", "max_tokens": 2})
    assert status == 400 and got["error"]["param"] == "prompt"
    for raw in (b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000, b'{"model": "base", "prompt": "x", '
                                                                b'"temperature": NaN}'):
        status, got = server.http("POST", "/v1/completions", raw=raw)
        assert 400 <= status < 500, (raw[:20], got)
    assert server.http("GET", "/reports/%00")[0] == 404
    assert health(server)["failed"] == 0


def test_7_the_key_is_never_a_cookie(server):
    """The key (with / + = %) works as the Bearer header, and a cookie holding it, raw or encoded, does not: the
    playground sends the header for the reports too and writes no cookie."""
    from urllib.parse import quote

    assert server.http("GET", "/reports/index.json")[0] == 200
    for cookie in (KEY, quote(KEY, safe="")):
        status, _ = server.http("GET", "/reports/index.json", key=None, headers={"Cookie": f"llm_tuning_key={cookie}"})
        assert status == 401
    status, page = server.http("GET", "/", key=None)
    assert status == 200 and "document.cookie" not in page and 'sandbox' in page


def sigterm_server(args, *extra):
    return Server(*args, "--max-queue", "16", "--request-timeout", "0", *extra, api_key=KEY)


def test_5_sigterm_answers_the_queue_503_and_exits_in_bounded_time(args):
    """SIGTERM with one endless generation running and 10 waiting: the 10 get 503 at once, the running one is
    stopped after --shutdown-timeout 2 (503), and the process is gone within a few seconds."""
    with sigterm_server(args, "--shutdown-timeout", "2") as srv:
        running = raw_request(srv, endless("lora"))
        assert wait_health(srv, lambda h: h["running"], 10)["running"]
        waiting = [raw_request(srv, endless("lora")) for _ in range(10)]
        assert wait_health(srv, lambda h: h["queued"] == 10, 10)["queued"] == 10
        t = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        assert [status_of(s) for s in waiting] == [503] * 10
        assert time.time() - t < 3
        assert status_of(running) == 503
        srv.proc.wait(timeout=10)
        assert time.time() - t < 6


def test_5_a_second_signal_exits_at_once(args):
    """A connection still sending its body (--receive-timeout 30) keeps the server waiting after SIGTERM; a
    second SIGTERM exits at once."""
    with sigterm_server(args, "--receive-timeout", "30") as srv:
        slow = socket.create_connection(("127.0.0.1", srv.port))
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n" + AUTH + b"\r\n{")
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert srv.proc.poll() is None  # waiting for that request
        t = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=20)
        assert time.time() - t < 3
        slow.close()


def test_ordinary_requests_still_get_their_solo_answers_under_the_limits(server):
    """16 clients x 2 requests at once (more than --max-queue 3 would take at once, so the openai client's own
    retries on 429 are used) all end with the answer the same request gets alone."""
    questions = ["说出一种水果。", "很久以前", "天空是什么颜色？"]
    solo = {(m, q): server.client().completions.create(model=m, prompt=q, max_tokens=6, temperature=0)
            .choices[0].text for m in ("base", "lora", "prompt") for q in questions}
    got, errors = [], []

    def client(k):
        from openai import OpenAI

        c = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=20, timeout=60)
        for i in range(2):
            m, q = ("base", "lora", "prompt")[(k + i) % 3], questions[(k * 2 + i) % 3]
            try:
                got.append(((m, q), c.completions.create(model=m, prompt=q, max_tokens=6, temperature=0)
                            .choices[0].text))
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(got) == 32 and all(text == solo[key] for key, text in got)
