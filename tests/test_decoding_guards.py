"""Loop guards in decoding (--repetition-penalty, --no-repeat-ngram-size): our KV-cached loop with transformers'
own logits processors gives transformers' `generate` answer, no n-gram repeats where it is forbidden, and the
server takes both as request fields."""

import pytest
import torch

from llm_tuning.data.templates import format_prompt
from llm_tuning.data.tokenize import encode_prompt, prepare_tokenizer
from llm_tuning.infer.sampling import Sampling
from llm_tuning.infer.generate import generate_ids
from llm_tuning.models import load_model, load_tokenizer

NEW = 40


def _ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


@pytest.fixture(scope="module")
def looping(tiny_models, sample_records):
    """A random tiny Llama, which loops, and two prompts."""
    path = tiny_models["llama"]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    prompts = [encode_prompt(tok, format_prompt(r)) for r in sample_records[:2]]
    return load_model(path).eval(), tok, prompts


@pytest.mark.parametrize("penalty,n", [(1.3, 0), (1.0, 3), (1.5, 2)])
def test_same_answer_as_transformers_generate_with_the_same_processors(looping, penalty, n):
    model, tok, prompts = looping
    s = Sampling(NEW, repetition_penalty=penalty, no_repeat_ngram_size=n)
    ours = generate_ids(model, prompts, -1, tok.pad_token_id, NEW, penalties=s.penalties())  # -1: never stops
    for p, got in zip(prompts, ours):
        ids = torch.tensor([p])
        with torch.no_grad():
            want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                  do_sample=False, repetition_penalty=penalty, no_repeat_ngram_size=n,
                                  eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert got == want


def test_no_repeat_ngram_size_forbids_what_plain_greedy_repeats(looping):
    model, tok, prompts = looping
    plain = generate_ids(model, prompts, -1, tok.pad_token_id, NEW)
    guarded = generate_ids(model, prompts, -1, tok.pad_token_id, NEW,
                           penalties=Sampling(NEW, no_repeat_ngram_size=3).penalties())
    assert any(len(set(_ngrams(p + a, 3))) < len(_ngrams(p + a, 3)) for p, a in zip(prompts, plain))  # it loops
    for p, a in zip(prompts, guarded):
        grams = _ngrams(p + a, 3)
        assert len(a) == NEW and len(set(grams[len(p) - 2:])) == len(grams[len(p) - 2:])  # each answer 3-gram new
        assert not set(grams[len(p) - 2:]) & set(grams[:len(p) - 2])  # and none from the prompt


def test_defaults_are_off_and_declared_once():
    from llm_tuning.config.commands import GenerateConfig

    s = Sampling()
    assert s.penalties() == [] and (s.repetition_penalty, s.no_repeat_ngram_size) == (
        GenerateConfig().repetition_penalty, GenerateConfig().no_repeat_ngram_size) == (1.0, 0)


def test_the_server_takes_both_as_request_fields(tiny_models, sample_records):
    """The chat answer with the guards is the one infer.generate gives with the same Sampling (and not the plain
    one, which loops on this random model)."""
    from fastapi.testclient import TestClient

    from llm_tuning.infer import generate, load_for_inference
    from llm_tuning.infer.adapters import AdapterSet
    from llm_tuning.infer.serve import create_app

    rec = {"instruction": sample_records[0]["instruction"], "input": ""}
    model, tok, _ = load_for_inference(tiny_models["llama"])
    want = generate(model, tok, [rec], sampling=Sampling(NEW, no_repeat_ngram_size=2, repetition_penalty=1.5))[0]
    assert want != generate(model, tok, [rec], sampling=Sampling(NEW))[0]
    app = create_app(AdapterSet(tiny_models["llama"], None, log=lambda m: None), None, None, NEW)
    with TestClient(app) as client:
        body = {"model": "base", "messages": [{"role": "user", "content": rec["instruction"]}], "max_tokens": NEW,
                "temperature": 0}
        guarded = client.post("/v1/chat/completions", json={**body, "no_repeat_ngram_size": 2, "repetition_penalty": 1.5})
        assert guarded.status_code == 200 and guarded.json()["choices"][0]["message"]["content"].strip() == want
        bad = client.post("/v1/chat/completions", json={**body, "no_repeat_ngram_size": -1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "no_repeat_ngram_size"
