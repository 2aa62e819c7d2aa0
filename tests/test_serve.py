"""`llm-tuning serve`: the official openai client and plain HTTP against a real server on loopback, over one
tiny Llama with LoRA, IA3 and prompt-tuning adapters (one base in memory)."""

import threading

import pytest

from llm_tuning.infer.sampling import Sampling

from conftest import run_cli
from serving import QUESTION, Server, alone, trained_adapters

KEY = "test-key-123"


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    return trained_adapters(tiny_models, tmp_path_factory, ("lora", "ia3", "prompt", "prefix", "bitfit"))


@pytest.fixture(scope="module")
def server(tiny_models, adapters):
    args = ["--model", tiny_models["llama"]] + [x for m, d in adapters.items() for x in ("--adapter", f"{m}={d}")]
    with Server(*args, api_key=KEY) as s:
        yield s


def ask(client, model, content=QUESTION, **kw):
    kw = {"temperature": 0, "max_tokens": 12, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_models_are_the_base_and_each_adapter(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["base", "lora", "ia3", "prompt", "prefix", "bitfit"]
    assert server.http("GET", "/v1/models/ia3")[1]["method"] == "ia3"
    assert server.http("GET", "/v1/models/bitfit")[1]["method"] == "bitfit"


def test_each_model_answers_as_its_adapter_loaded_alone(server, tiny_models, adapters):
    """Non-streaming through the openai client: base, LoRA, IA3, prompt and prefix tuning over ONE shared base
    (BitFit beside it) give exactly the greedy answer each gets loaded by itself, whatever ran before; the
    adapters do change the answer."""
    from llm_tuning.data.tokenize import prompt_ids
    from llm_tuning.models import load_tokenizer

    client = server.client()
    order = ("lora", "base", "ia3", "prefix", "bitfit", "prompt", "lora", "base")
    got = [(m, ask(client, m)) for m in order]
    want = {m: alone(tiny_models["llama"], adapters.get(m)) for m in set(order)}
    for m, r in got:
        assert r.choices[0].message.content.strip() == want[m], m
        assert r.model == m and r.choices[0].message.role == "assistant"
    assert len(set(want.values())) == 6  # no two models answer alike here
    first = dict(got)
    n_prompt = len(prompt_ids(load_tokenizer(tiny_models["llama"]), {"instruction": QUESTION, "input": ""}))
    u = first["base"].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert first["base"].choices[0].finish_reason == "length"


def test_a_conversation_is_answered_with_its_system_prompt_and_history(server, tiny_models, adapters):
    """The messages go through the adapter's template as a multi-turn record: the answer is the one
    infer.generate gives for the record with that system prompt and history."""
    from llm_tuning.infer import generate, load_for_inference

    messages = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": "苹果。"}, {"role": "user", "content": "再说一种。"}]
    got = {m: server.client().chat.completions.create(model=m, messages=messages, max_tokens=12, temperature=0)
           for m in ("prompt", "lora")}
    for m, r in got.items():
        model, tok, _ = load_for_inference(tiny_models["llama"], adapters[m])
        record = {"instruction": "再说一种。", "input": "", "system": "你是一个助手。", "history": [[QUESTION, "苹果。"]]}
        assert r.choices[0].message.content.strip() == generate(model, tok, [record], sampling=Sampling(12))[0], m


@pytest.mark.parametrize("model", ["lora", "base", "prompt"])
def test_streaming_gives_the_same_answer_in_openai_chunks(server, model):
    client = server.client()
    whole = ask(client, model)
    chunks = list(ask(client, model, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def test_completions_continue_the_raw_prompt(server):
    from llm_tuning.data.templates import format_prompt

    client = server.client()
    prompt = format_prompt({"instruction": QUESTION})
    r = client.completions.create(model="ia3", prompt=prompt, max_tokens=12, temperature=0)
    chat = ask(client, "ia3")
    assert r.object == "text_completion" and r.choices[0].text.strip() == chat.choices[0].message.content.strip()
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="ia3", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_stop_strings_end_the_answer_streamed_or_not(server):
    client = server.client()
    full = ask(client, "lora", max_tokens=16).choices[0].message.content
    stop = full[4:6]
    want = full[: full.find(stop)]
    r = ask(client, "lora", max_tokens=16, stop=[stop, "never-there"])
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, "lora", max_tokens=16, stop=stop,
                                                                     stream=True) if c.choices)
    assert streamed == want


def test_sampling_follows_seed_temperature_and_top_p(server):
    client = server.client()

    def sample(seed, **kw):
        return ask(client, "base", temperature=1.0, seed=seed, max_tokens=16, **kw).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1
    greedy = ask(client, "base", max_tokens=16).choices[0].message.content
    assert sample(5, top_p=1e-6) == greedy  # the nucleus holds only the most likely token


def test_bad_requests_get_openai_shaped_errors(server):
    def error(status, method, path, body=None, **kw):
        code, got = server.http(method, path, body, **kw)
        assert code == status, (path, body, got)
        assert set(got["error"]) == {"message", "type", "param", "code"} and got["error"]["message"]
        return got["error"]

    chat = {"model": "lora", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert error(404, "POST", "/v1/chat/completions", {**chat, "model": "nope"})["code"] == "model_not_found"
    assert error(404, "POST", "/v1/completions", {"model": "nope", "prompt": "x"})["param"] == "model"
    error(404, "GET", "/v1/models/nope")
    assert error(400, "POST", "/v1/chat/completions", raw=b'{"model": "lora",')["code"] == "invalid_json"
    assert error(400, "POST", "/v1/chat/completions", {**chat, "temperature": 5})["param"] == "temperature"
    assert error(400, "POST", "/v1/chat/completions", {**chat, "max_tokens": 0})["param"] == "max_tokens"
    assert error(400, "POST", "/v1/chat/completions", {"model": "lora"})["param"] == "messages"
    error(400, "POST", "/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]})
    error(400, "POST", "/v1/chat/completions", {**chat, "messages": [{"role": "assistant", "content": "x"}]})
    error(400, "POST", "/v1/chat/completions", {**chat, "stop": ["a", "b", "c", "d", "e"]})
    error(400, "POST", "/v1/completions", {"model": "base", "prompt": ["one", "two"]})
    long = " ".join(["苹果香蕉"] * 1500)  # well over the tiny Llama's 2048 positions
    e = error(400, "POST", "/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": long}]})
    assert e["code"] == "context_length_exceeded" and "2048" in e["message"]
    e = error(400, "POST", "/v1/completions", {"model": "prompt", "prompt": long, "stream": True})
    assert e["code"] == "context_length_exceeded"
    assert error(401, "GET", "/v1/models", key=None)["code"] == "invalid_api_key"
    assert error(401, "POST", "/v1/chat/completions", chat, key="wrong")["code"] == "invalid_api_key"
    error(401, "GET", "/reports/index.json", key=None)
    assert server.http("POST", "/v1/chat/completions", chat)[0] == 200  # the server still answers


def test_concurrent_clients_never_mix_answers(server):
    """8 clients x 25 requests over three model names, half of them streamed: no error, and every greedy
    answer is the one the same request gets alone."""
    from llm_tuning.data.formats import load_records
    from conftest import SAMPLE

    questions = [r["instruction"] for r in load_records(SAMPLE).records[:5]]
    models = ["base", "lora", "ia3"]
    client = server.client()
    ref = {(m, q): ask(client, m, q, max_tokens=6).choices[0].message.content for m in models for q in questions}
    errors, wrong, done = [], [], []

    def run_client(k):
        c = server.client()
        for i in range(25):
            m, q = models[(k + i) % 3], questions[(k * 7 + i) % 5]
            try:
                if i % 2:
                    text = "".join(ch.choices[0].delta.content or "" for ch in
                                   ask(c, m, q, max_tokens=6, stream=True) if ch.choices)
                else:
                    text = ask(c, m, q, max_tokens=6).choices[0].message.content
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(repr(e))
                continue
            (done if text == ref[(m, q)] else wrong).append((m, q, text))

    threads = [threading.Thread(target=run_client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert not wrong, wrong[:3]
    assert len(done) == 200
    assert len(set(ref.values())) > 5  # the models really answer differently


def test_serve_binds_loopback_unless_told():
    from llm_tuning.cli import BY_NAME, _config, build_parser

    args = build_parser().parse_args(["serve", "--model", "m"])
    cfg = _config(BY_NAME["serve"], args)
    assert cfg.host == "127.0.0.1" and cfg.trust_remote_code is False


def test_bad_adapter_flags_fail_before_loading(tiny_models, adapters, tmp_path):
    from llm_tuning.errors import UserError
    from llm_tuning.infer.adapters import parse_adapter_specs

    for bad, said in ((["lora"], "expected NAME=DIR"), ([f"base={adapters['lora']}"], "is taken"),
                      ([f"a={tmp_path / 'none'}"], "is not a folder"),
                      ([f"a={adapters['lora']}", f"a={adapters['ia3']}"], "is taken")):
        with pytest.raises(UserError, match=said):
            parse_adapter_specs(bad)
    r = run_cli("serve", "--model", tiny_models["llama"], "--adapter", f"a={adapters['lora']},a={adapters['ia3']}",
                "--port", "1")
    assert r.returncode == 2 and "is taken" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("serve", "--model", tiny_models["bloom"], "--adapter", f"x={adapters['lora']}", "--port", "1")
    assert r.returncode == 2 and "another base model" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("which", ["tiny-bpe", "llama2"])
def test_streamed_pieces_join_to_the_whole_answer(tiny_models, which):
    """The text handed out token by token (incremental decoding) is the whole answer's decode, a SentencePiece
    tokenizer's spaces and byte-level pieces of Chinese characters included, and stops before a stop string."""
    import random

    from conftest import LLAMA2_TOKENIZER, need_shared
    from llm_tuning.infer.streaming import _Text
    from llm_tuning.models import load_tokenizer

    tok = load_tokenizer(tiny_models["llama"] if which == "tiny-bpe" else need_shared(LLAMA2_TOKENIZER))
    rng = random.Random(0)
    for _ in range(4):
        ids = [rng.randrange(3, min(len(tok), 32000)) for _ in range(300)]
        whole = tok.decode(ids, skip_special_tokens=True)
        for lstrip in (False, True):
            text = _Text(tok, (), lstrip)
            pieces = [text.add(i) for i in ids] + [text.flush()]
            assert "".join(pieces) == (whole.lstrip() if lstrip else whole)
        stop = whole[len(whole) // 2: len(whole) // 2 + 3]
        text = _Text(tok, (stop,), False)
        pieces = []
        for i in ids:
            pieces.append(text.add(i))
            if text.stopped:
                break
        pieces.append(text.flush())
        assert "".join(pieces) == whole[: whole.find(stop)] and text.stopped


def test_a_client_that_hangs_up_stops_its_generation(server):
    """A streamed answer of up to 2000 tokens whose client closes the connection after two events is cancelled
    at the next token (the worker says so in /health), and the server goes on answering."""
    import json
    import time
    import urllib.request

    before = server.http("GET", "/health")[1]
    body = {"model": "base", "messages": [{"role": "user", "content": "讲一个很长的故事。"}], "max_tokens": 2000,
            "temperature": 0, "stream": True}
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = urllib.request.urlopen(req, timeout=60)
    events = []
    while len(events) < 2:
        line = r.readline()
        if line.startswith(b"data: "):
            events.append(line)
    r.close()
    deadline = time.time() + 120
    while time.time() < deadline:
        now = server.http("GET", "/health")[1]
        if now["cancelled"] + now["finished"] > before["cancelled"] + before["finished"]:
            break
        time.sleep(0.2)
    assert now["cancelled"] == before["cancelled"] + 1 and now["finished"] == before["finished"]
    assert ask(server.client(), "lora").choices[0].message.content
