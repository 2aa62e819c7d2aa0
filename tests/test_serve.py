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
    return trained_adapters(tiny_models, tmp_path_factory, ("lora", "ia3", "prompt", "prefix", "bitfit", "ptuning"))


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
    assert [m.id for m in models.data] == ["base", "lora", "ia3", "prompt", "prefix", "bitfit", "ptuning"]
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
    error(400, "POST", "/v1/completions", {"model": "base", "prompt": []})
    error(400, "POST", "/v1/completions", {"model": "base", "prompt": [[1, 2], []]})
    error(400, "POST", "/v1/completions", {"model": "base", "prompt": ["one", [1, 2]]})
    error(400, "POST", "/v1/completions", {"model": "base", "prompt": ["1", True]})
    assert error(400, "POST", "/v1/completions", {"model": "base", "prompt": [5, 600]})["param"] == "prompt"
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
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "does not fit the base" in r.stderr and "llama (adapter) vs bloom (base)" in r.stderr, r.stderr


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


# ---------------------------------------------------------------- the protocol as vLLM serves it

ALL_MODELS = ("base", "lora", "ia3", "prompt", "prefix", "ptuning", "bitfit")


def completion(server, **body):
    status, got = server.http("POST", "/v1/completions", body)
    assert status == 200, got
    return got


def test_echoed_log_probabilities_are_the_eval_loss_for_every_method(server, tiny_models, adapters, sample_records):
    """Three records in one request (one batch, left-padded), as token ids with echo and max_tokens 0: each
    record's answer tokens' mean log-probability is minus `llm-tuning eval`'s loss on that record (the same
    function, the adapter loaded alone), for the base and every method (prompt tuning and P-tuning's virtual
    tokens, prefix tuning's prefix, BitFit beside the shared base); the models' figures all differ."""
    from llm_tuning.data.tokenize import IGNORE, encode_records
    from llm_tuning.evaluate import response_loss
    from llm_tuning.infer import load_for_inference

    records = sample_records[:3]
    seen = {}
    for name in ALL_MODELS:
        model, tok, _ = load_for_inference(tiny_models["llama"], adapters.get(name))
        enc = encode_records(tok, records, "default", 128)
        got = completion(server, model=name, prompt=enc.input_ids, echo=True, logprobs=0, max_tokens=0)
        assert [c["index"] for c in got["choices"]] == [0, 1, 2]
        for ids, labels, choice, record in zip(enc.input_ids, enc.labels, got["choices"], records):
            lp = choice["logprobs"]["token_logprobs"]
            assert len(lp) == len(ids) and lp[0] is None and choice["finish_reason"] == "length"
            answer = [lp[i] for i, y in enumerate(labels) if y != IGNORE]
            want = -response_loss(model, tok, [record], "default", 128)["loss"]
            assert abs(sum(answer) / len(answer) - want) < 1e-4, (name, sum(answer) / len(answer), want)
            seen.setdefault(name, []).append(round(want, 4))
        assert got["usage"] == {"prompt_tokens": sum(map(len, enc.input_ids)), "completion_tokens": 0,
                                "total_tokens": sum(map(len, enc.input_ids))}
    assert len({tuple(v) for v in seen.values()}) == len(ALL_MODELS)


def test_completion_logprobs_echo_and_a_list_of_prompts(server, tiny_models):
    """Completions as lm-eval asks (ids, echo, logprobs 1, max_tokens 1): the ids are echoed as given (no bos
    added), the first has null, one generated token follows; top_logprobs hold the token and the k most likely;
    a string prompt echoes its text; prompts x n are answered prompt-major; the generated tokens' figures are
    those of the forward over prompt + answer."""
    from llm_tuning.models import load_tokenizer

    tok = load_tokenizer(tiny_models["llama"])
    ids = tok("很久以前，有一个")["input_ids"]
    other = tok("说出一种水果。")["input_ids"]
    got = completion(server, model="lora", prompt=[ids, other], echo=True, logprobs=2, max_tokens=3,
                     temperature=0, n=2)
    first, second = got["choices"][0], got["choices"][2]
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    assert got["choices"][1]["text"] == first["text"] and got["choices"][3]["text"] == second["text"]  # greedy
    lp = first["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 3 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"][:len(ids)]) == tok.decode(ids) and first["text"].startswith(tok.decode(ids))
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    for value, top, token in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], lp["tokens"][1:]):
        assert top[token] == value and 2 <= len(top) <= 3 and max(top.values()) >= value
    for value, top in zip(lp["token_logprobs"][-3:], lp["top_logprobs"][-3:]):
        assert value == max(top.values())  # greedy: each answer token is the most likely
    assert second["text"].startswith("说出一种水果。") and len(second["logprobs"]["tokens"]) == len(other) + 3
    text = completion(server, model="lora", prompt=["说出一种水果。"], echo=True, max_tokens=3, temperature=0)
    assert text["choices"][0]["text"] == second["text"] and text["choices"][0]["logprobs"] is None
    lm_eval_style = completion(server, model="prefix", prompt=[ids], echo=True, logprobs=1, max_tokens=1,
                               temperature=0, seed=1234)
    assert len(lm_eval_style["choices"][0]["logprobs"]["token_logprobs"]) == len(ids) + 1


@pytest.mark.parametrize("name", ["lora", "prompt", "prefix"])
def test_answer_log_probabilities_are_those_of_the_forward_over_prompt_and_answer(tiny_models, adapters, name):
    """The decoding loop's own figures (KV cache; virtual tokens and prefixes computed once) for two prompts of
    different lengths in one batch, greedy and sampled: each answer token's log-probability is the one a plain
    forward of the model over prompt + answer gives it, and its k alternatives are the k most likely there."""
    import torch

    from llm_tuning.infer import load_for_inference
    from llm_tuning.infer.streaming import stream_batch

    model, tok, _ = load_for_inference(tiny_models["llama"], adapters[name])
    prompts = [tok("很久以前，有一个")["input_ids"], tok("说出一种水果。")["input_ids"]]
    for sampling in (Sampling(6), Sampling(6, temperature=1.0, seed=3)):
        for ids, c in zip(prompts, stream_batch(model, tok, prompts, sampling, logprobs=3)):
            assert len(c.logprobs) == len(c.token_ids) > 0
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + c.token_ids])).logits[0, -len(ids) - len(c.token_ids):]
            rows = torch.log_softmax(logits.float(), -1)[len(ids) - 1:-1]
            for row, token, entry in zip(rows, c.token_ids, c.logprobs):
                assert entry.id == token and abs(entry.logprob - row[token].item()) < 1e-4
                top = row.topk(3)
                assert [round(v, 4) for _, v in entry.top] == [round(v, 4) for v in top.values.tolist()]


def test_an_answer_ended_by_eos_lists_the_eos(tiny_models):
    """The token that ends an answer is listed with its log-probability (lm-eval reads the prompt's figures as
    all but the last entry), though neither the text nor completion_tokens count it."""
    import torch

    from llm_tuning.infer import load_for_inference
    from llm_tuning.infer.streaming import stream_batch

    model, tok, _ = load_for_inference(tiny_models["llama"])
    head = model.lm_head
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    model.lm_head.weight.data.copy_(head.weight.data)
    model.lm_head.bias.data.zero_()
    model.lm_head.bias.data[tok.eos_token_id] = 50.0  # this model always ends at once
    ids = tok("很久以前")["input_ids"]
    (c,) = stream_batch(model, tok, [ids], Sampling(1), logprobs=1, echo=True)
    assert c.token_ids == [tok.eos_token_id] and c.completion_tokens == 0 and c.text == ""
    assert c.finish_reason == "stop" and len(c.prompt_logprobs) == len(ids)
    assert c.logprobs[0].text == tok.eos_token and c.logprobs[0].logprob > -1e-3


def test_chat_logprobs_sampling_and_n(server):
    """Chat: logprobs with top_logprobs k gives each answer token with its bytes and the k most likely, most
    likely first; n answers per request, the same seed the same answers, other seeds others; greedy n copies
    are equal."""
    client = server.client()
    r = ask(client, "prompt", logprobs=True, top_logprobs=3, max_tokens=6)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 7 and "".join(t.token for t in content).startswith(r.choices[0].message.content)
    for t in content:
        assert t.bytes == list(t.token.encode()) and len(t.top_logprobs) == 3
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True) and abs(values[0] - t.logprob) < 1e-6  # greedy
    assert ask(client, "prompt", max_tokens=6).choices[0].logprobs is None
    sampled = ask(client, "base", n=3, temperature=1.0, seed=11, max_tokens=8)
    texts = [c.message.content for c in sampled.choices]
    assert [c.index for c in sampled.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in ask(client, "base", n=3, temperature=1.0, seed=11, max_tokens=8).choices] == texts
    assert [c.message.content for c in ask(client, "base", n=3, temperature=1.0, seed=12, max_tokens=8).choices] != texts
    wide = ask(client, "base", n=9, temperature=1.0, seed=2**64 - 1, max_tokens=4)  # two batches of rows
    assert [c.index for c in wide.choices] == list(range(9)) and len({c.message.content for c in wide.choices}) > 2
    greedy = ask(client, "lora", n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert greedy.usage.completion_tokens == 2 * ask(client, "lora").usage.completion_tokens


def test_streamed_logprobs_join_to_the_whole_answer(server):
    """Streamed completions carry the log-probabilities of the tokens in each chunk: joined per choice (echo
    first, n = 2) they are the non-streamed answer's, text_offset going on from chunk to chunk."""
    client = server.client()
    kw = dict(model="ia3", prompt="很久以前", max_tokens=5, temperature=0, logprobs=2, echo=True, n=2)
    whole = client.completions.create(**kw)
    joined = {0: {"tokens": [], "token_logprobs": [], "text_offset": [], "text": ""},
              1: {"tokens": [], "token_logprobs": [], "text_offset": [], "text": ""}}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            joined[c.index]["text"] += c.text
            if c.logprobs:
                for key in ("tokens", "token_logprobs", "text_offset"):
                    joined[c.index][key] += getattr(c.logprobs, key)
    for i in (0, 1):
        want = whole.choices[i]
        assert joined[i]["text"] == want.text
        assert joined[i]["tokens"] == want.logprobs.tokens and joined[i]["text_offset"] == want.logprobs.text_offset
        assert [round(x, 5) if x is not None else None for x in joined[i]["token_logprobs"]] == \
            [round(x, 5) if x is not None else None for x in want.logprobs.token_logprobs]
    chat = list(ask(client, "lora", stream=True, logprobs=True, top_logprobs=1))
    tokens = [t.token for c in chat if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in ask(client, "lora", logprobs=True, top_logprobs=1).choices[0].logprobs.content]


def test_fields_not_implemented_are_refused_by_name(server):
    """Every OpenAI / vLLM field the server does not implement is a 400 naming it when it asks for something;
    its neutral value (and keys no API defines) pass."""
    chat = {"model": "lora", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    comp = {"model": "lora", "prompt": "hi", "max_tokens": 2}
    refused = [(chat, "tools", [{"type": "function", "function": {"name": "f"}}]), (chat, "tool_choice", "auto"),
               (chat, "response_format", {"type": "json_object"}), (comp, "logit_bias", {"5": 10}),
               (comp, "best_of", 2), (comp, "suffix", "end"), (chat, "presence_penalty", 0.5),
               (chat, "frequency_penalty", 1), (comp, "top_k", 5), (chat, "functions", [{"name": "f"}]),
               (comp, "prompt_logprobs", 1), (chat, "audio", {"voice": "x"}), (chat, "chat_template", "x"),
               (comp, "min_tokens", 2), (comp, "ignore_eos", True), (chat, "add_generation_prompt", False)]
    for base, field, value in refused:
        path = "/v1/chat/completions" if "messages" in base else "/v1/completions"
        status, got = server.http("POST", path, {**base, field: value})
        assert status == 400 and got["error"]["param"] == field, (field, got)
        assert got["error"]["code"] == "unsupported_parameter" and field in got["error"]["message"]
    for body, param in (({**chat, "top_logprobs": 2}, "top_logprobs"), ({**comp, "stream_options": {}}, "stream_options"),
                        ({**comp, "max_tokens": 0}, "max_tokens"), ({**comp, "logprobs": 21}, "logprobs"),
                        ({**chat, "n": 129}, "n")):
        status, got = server.http("POST", "/v1/chat/completions" if "messages" in body else "/v1/completions", body)
        assert status == 400 and got["error"]["param"] == param, (body, got)
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "tool_choice": "none",
               "response_format": {"type": "text"}, "user": "u1", "store": False, "no_such_key": 1}
    assert server.http("POST", "/v1/chat/completions", {**chat, **neutral})[0] == 200
    assert server.http("POST", "/v1/completions", {**comp, "best_of": 1, "suffix": "", "top_k": -1})[0] == 200


def test_tokenize_detokenize_and_version(server, tiny_models):
    """vLLM's /tokenize (a prompt, or messages through the adapter's template) gives the ids the endpoints feed
    the model (their usage counts them), /detokenize turns ids back into text, /version says the package's."""
    import llm_tuning

    status, got = server.http("POST", "/tokenize", {"model": "prompt", "prompt": "很久以前", "return_token_strs": True})
    assert status == 200 and got["count"] == len(got["tokens"]) == len(got["token_strs"])
    assert got["max_model_len"] == 2048 - 4  # the prompt-tuning adapter's 4 virtual tokens take their places
    assert completion(server, model="prompt", prompt="很久以前", max_tokens=1)["usage"]["prompt_tokens"] == got["count"]
    assert server.http("POST", "/detokenize", {"tokens": got["tokens"]})[1] == {"prompt": "很久以前"}
    messages = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": QUESTION}]
    counted = server.http("POST", "/tokenize", {"model": "lora", "messages": messages})[1]["count"]
    used = server.client().chat.completions.create(model="lora", messages=messages, max_tokens=1).usage.prompt_tokens
    assert counted == used
    assert server.http("GET", "/version", key=None)[1] == {"version": llm_tuning.__version__}
    assert server.http("POST", "/tokenize", {"prompt": "x"}, key=None)[0] == 401
    assert server.http("POST", "/detokenize", {"tokens": [1, 600]})[1]["error"]["param"] == "tokens"
    assert server.http("POST", "/tokenize", {"model": "nope", "prompt": "x"})[0] == 404
    assert server.http("POST", "/tokenize", {"prompt": "x", "messages": messages})[0] == 400


def scrape(server) -> dict:
    """{(name, labels): value} of every sample /metrics exposes (prometheus_client's own parser)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_and_the_request_log(server):
    """/metrics (no key) counts the requests by endpoint, model and status, the tokens in and out as the usage
    says, times to first token and latencies; the queue's gauges are there; the server logs one line per
    request with its tokens and no prompt text."""
    before = scrape(server)
    prompt = "一个不会出现在日志里的提示"
    r = server.client().completions.create(model="lora", prompt=prompt, max_tokens=4, temperature=0)
    server.http("POST", "/v1/completions", {"model": "nope", "prompt": "x"})
    after = scrape(server)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("llm_tuning:requests_total", endpoint="/v1/completions", model_name="lora", status="200") == 1
    assert grew("llm_tuning:requests_total", endpoint="/v1/completions", model_name="", status="404") == 1
    assert grew("llm_tuning:prompt_tokens_total", model_name="lora") == r.usage.prompt_tokens
    assert grew("llm_tuning:generation_tokens_total", model_name="lora") == r.usage.completion_tokens
    assert grew("llm_tuning:time_to_first_token_seconds_count", model_name="lora") == 1
    assert grew("llm_tuning:e2e_request_latency_seconds_count", model_name="lora") == 1
    assert grew("llm_tuning:request_success_total", model_name="lora", finished_reason="length") == 1
    assert after[("llm_tuning:num_requests_waiting", ())] == 0
    assert ("llm_tuning:num_requests_running", ()) in after
    lines = [line for line in server.output().splitlines() if "POST /v1/completions model=lora status=200" in line]
    assert lines and f"prompt_tokens={r.usage.prompt_tokens} completion_tokens=4 seconds=" in lines[-1]
    assert prompt not in server.output()


def test_two_applications_keep_their_own_metrics(tiny_models):
    """Each application has its own registry: two in one process (as the tests build them) do not clash."""
    from llm_tuning.infer.adapters import AdapterSet
    from llm_tuning.infer.serve import create_app

    adapters = AdapterSet(tiny_models["llama"], None, log=lambda m: None)
    first, second = create_app(adapters), create_app(adapters)
    first.state.metrics.prompt_tokens.labels("base").inc(3)
    count = {"model_name": "base"}
    assert first.state.metrics.registry.get_sample_value("llm_tuning:prompt_tokens_total", count) == 3
    assert second.state.metrics.registry.get_sample_value("llm_tuning:prompt_tokens_total", count) is None
    for app in (first, second):
        app.state.worker.close()
