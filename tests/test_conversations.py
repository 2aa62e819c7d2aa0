"""Multi-turn records: the three forms normalise alike, every assistant turn is learned exactly (its tokens and
eos, -100 elsewhere) under each template, --train-on last, --template auto, bad records, and training via the CLI."""

import json
import os
import shutil

import pytest
from conftest import run_cli

from llm_tuning.data.cache import cache_key
from llm_tuning.data.formats import load_records, validate_record
from llm_tuning.data.tokenize import (
    IGNORE,
    conversation_prompt_ids,
    encode_conversation,
    encode_records,
    prepare_tokenizer,
    prompt_ids,
)
from llm_tuning.errors import UserError
from llm_tuning.models import load_tokenizer

SYSTEM = "你是一位耐心的老师。"
TURNS = [("什么是质数？", "只能被1和它自己整除的大于1的整数。"), ("1是质数吗？", "不是。"), ("最小的两位数质数？", "11。")]
FORMS = {
    "alpaca-history": {"instruction": TURNS[-1][0], "input": "", "output": TURNS[-1][1], "system": SYSTEM,
                       "history": [list(t) for t in TURNS[:-1]]},
    "sharegpt-conversations": {"conversations": [{"from": "system", "value": SYSTEM}] + [
        {"from": f, "value": v} for u, a in TURNS for f, v in (("human", u), ("gpt", a))]},
    "sharegpt-messages": {"system": SYSTEM, "messages": [
        {"role": r, "content": v} for u, a in TURNS for r, v in (("user", u), ("assistant", a))]},
}
# ChatML-like, ending each answer with the eos token (as many chat templates do)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_EOS = CHATML.replace("{{ eos_token }}", "<|im_end|>")


@pytest.fixture(scope="module")
def tok(tiny_models):
    return prepare_tokenizer(load_tokenizer(tiny_models["llama"]), log=lambda m: None)


def with_template(tok, template):
    t = prepare_tokenizer(load_tokenizer(tok.name_or_path), log=lambda m: None)
    t.chat_template = template
    return t


def learned_spans(ids, labels):
    """The runs of learned positions, as lists of label ids; labels equal ids wherever they are learned."""
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(lab)
    return spans + ([cur] if cur else [])


def answers_ids(tok, template="default"):
    if template == "llama2":  # the official render's answer, " A </s>", tokenised with the rest (eos as text)
        return [tok(f" {a} {tok.eos_token}", add_special_tokens=False)["input_ids"] for _, a in TURNS]
    return [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, a in TURNS]


def test_every_form_normalises_to_the_same_record():
    recs = [validate_record(r, i, "data.json") for i, r in enumerate(FORMS.values())]
    assert recs[0] == recs[1] == recs[2]
    assert recs[0]["system"] == SYSTEM and recs[0]["history"] == [list(t) for t in TURNS[:-1]]
    # a single-turn record keeps exactly its three fields (what the cache and the reports saw before)
    assert validate_record({"instruction": "a", "output": "b"}, 0, "x") == {"instruction": "a", "input": "",
                                                                             "output": "b"}


EXPECTED_TEXT = {
    "default": "System: {s}\n\nHuman: {u0}\n\nAssistant: {a0}</s>Human: {u1}\n\nAssistant: {a1}</s>"
               "Human: {u2}\n\nAssistant: {a2}</s>",
    "llama2": "<s>[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{u0} [/INST] {a0} </s><s>[INST] {u1} [/INST] {a1} </s>"
              "<s>[INST] {u2} [/INST] {a2} </s>",
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("template", ["default", "llama2", "auto"])
def test_each_assistant_turn_is_learned_exactly(form, template, tok):
    t = with_template(tok, CHATML) if template == "auto" else tok
    rec = validate_record(FORMS[form], 0, "data.json")
    ids, labels = encode_conversation(t, rec, template)
    assert learned_spans(ids, labels) == answers_ids(t, template)
    text = t.decode(ids)
    if template == "auto":
        msgs = [{"role": "system", "content": SYSTEM}] + [
            {"role": r, "content": v} for u, a in TURNS for r, v in (("user", u), ("assistant", a))]
        assert text == t.apply_chat_template(msgs, tokenize=False).rstrip("\n")
    else:
        fill = {"s": SYSTEM, **{f"u{i}": u for i, (u, _) in enumerate(TURNS)},
                **{f"a{i}": a for i, (_, a) in enumerate(TURNS)}}
        assert text == EXPECTED_TEXT[template].format(**fill)
    # --train-on last: only the final answer
    ids_last, labels_last = encode_conversation(t, rec, template, train_on="last")
    assert ids_last == ids and learned_spans(ids_last, labels_last) == answers_ids(t, template)[-1:]
    # the generation prompt is the training sequence up to the last answer
    prompt = prompt_ids(t, rec, template)
    assert ids[:len(prompt)] == prompt
    assert learned_spans(ids[len(prompt):], labels[len(prompt):]) == answers_ids(t, template)[-1:]


def test_single_turn_encoding_is_the_seeds(tok, sample_records):
    """prompt (with the tokenizer's special tokens, eos stripped) + response + eos, the prompt masked."""
    from llm_tuning.data.templates import format_prompt

    recs = [r for r in sample_records if not r.get("history")][:5]
    enc = encode_records(tok, recs, max_length=512)
    for r, ids, labels in zip(recs, enc.input_ids, enc.labels):
        p = tok(format_prompt(r), add_special_tokens=True)["input_ids"]
        a = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == p + a and labels == [IGNORE] * len(p) + a


def test_auto_template_without_eos_in_the_template_appends_it_by_id(tok):
    t = with_template(tok, NO_EOS)
    rec = validate_record(FORMS["sharegpt-messages"], 0, "x")
    ids, labels = encode_conversation(t, rec, "auto")
    # (transformers renders with trim_blocks: no newline after the end marker)
    expected = [t(a + "<|im_end|>", add_special_tokens=False)["input_ids"] + [t.eos_token_id] for _, a in TURNS]
    assert learned_spans(ids, labels) == expected


def test_auto_falls_back_to_default_without_a_chat_template(tok):
    assert not tok.chat_template
    rec = validate_record(FORMS["alpaca-history"], 0, "x")
    assert encode_conversation(tok, rec, "auto") == encode_conversation(tok, rec, "default")


def test_messages_prompt_equals_the_records_prompt(tok):
    from llm_tuning.infer.chat import prompt_from_messages

    rec = validate_record(FORMS["alpaca-history"], 0, "x")
    msgs = FORMS["sharegpt-messages"]["messages"][:-1]
    msgs = [{"role": "system", "content": SYSTEM}] + msgs
    for template in ("default", "llama2"):
        assert conversation_prompt_ids(tok, msgs, template) == prompt_ids(tok, rec, template)
        text = prompt_from_messages(msgs, template, tok)
        assert text.endswith(" [/INST]" if template == "llama2" else "Assistant: ") and SYSTEM in text
        assert text.count("</s>") == 2
    single = [{"role": "user", "content": "说出一种水果。"}]
    assert tok(prompt_from_messages(single, "default", tok))["input_ids"] == prompt_ids(
        tok, {"instruction": "说出一种水果。", "input": ""})


def test_cache_key_follows_train_on_and_the_chat_template(tok):
    recs = [validate_record(FORMS["alpaca-history"], 0, "x")]
    keys = {cache_key(tok, recs, "auto", 128), cache_key(tok, recs, "auto", 128, "last"),
            cache_key(with_template(tok, CHATML), recs, "auto", 128),
            cache_key(tok, [{**recs[0], "system": "另一个"}], "auto", 128)}
    assert len(keys) == 4


BAD = [
    ({"conversations": [{"from": "human", "value": "你好"}]}, "conversations[0] is a user turn with no answer"),
    ({"conversations": [{"from": "gpt", "value": "你好"}]}, "conversations[0]: a 'gpt' turn where the user's"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "conversations[1]"),
    ({"conversations": [{"from": "robot", "value": "a"}]}, "'from' is 'robot'; expected one of human, gpt, system"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]},
     "messages[0]: 'content' is empty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}]},
     "messages[1]: 'content' must be a string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "system", "content": "c"}]}, "messages[2]: a system turn may only come first"),
    ({"messages": []}, "holds no user turn"),
    ({"instruction": "a", "output": "b", "history": [["x"]]}, "history[0] must be a [user, assistant] pair"),
    ({"instruction": "a", "output": "b", "history": "x"}, "'history' must be a list"),
    ({"instruction": "a", "output": "b", "history": [["x", " "]]}, "history[0] has an empty assistant turn"),
    ({"instruction": "a", "output": "b", "system": 5}, "'system' must be a string"),
]


@pytest.mark.parametrize("rec,message", BAD)
def test_bad_multi_turn_records_get_one_line_naming_the_record(rec, message, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([FORMS["alpaca-history"], rec], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_records(str(path))
    msg = str(e.value)
    assert "\n" not in msg and f"{path}: record 1" in msg and message in msg, msg
    assert len(load_records(str(path), skip_bad_records=True).records) == 1


def test_bad_record_through_the_cli_exits_2(tiny_models, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(BAD[0][0]) + "\n", encoding="utf-8")
    r = run_cli("train", "--model", tiny_models["llama"], "--data", str(path), "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "record 0" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["sharegpt-auto", "alpaca-history-llama2-last"])
def test_multi_turn_data_trains_through_the_cli(case, tiny_models, tmp_path):
    model = tiny_models["llama"]
    if case == "sharegpt-auto":  # a model folder whose tokenizer carries a chat template
        model = str(tmp_path / "model")
        shutil.copytree(tiny_models["llama"], model)
        t = load_tokenizer(model)
        t.chat_template = CHATML
        t.save_pretrained(model)
        recs = [FORMS["sharegpt-conversations"], FORMS["sharegpt-messages"]] * 4
        args = ["--template", "auto"]
    else:
        recs = [FORMS["alpaca-history"], {"instruction": "说出一种水果。", "output": "苹果。"}] * 4
        args = ["--template", "llama2", "--train-on", "last"]
    data = tmp_path / ("data.jsonl" if case.startswith("sharegpt") else "data.json")
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) if data.suffix == ".jsonl" else json.dumps(
        recs, ensure_ascii=False)
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    r = run_cli("train", "--model", model, "--data", str(data), "--method", "lora", "--max-steps", "2",
                "--batch-size", "2", "--output-dir", str(out), "--cache", "false", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.load(open(out / "metrics.json"))
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == [1, 2]
    assert json.load(open(out / "llm_tuning.json"))["template"] == args[1]
    assert os.path.exists(out / "adapter_model.safetensors")
