"""Plain texts for forgetting: read from .txt paragraphs, {"text": ...} records or alpaca records, and the loss over
every one of their tokens, held against transformers' own causal-LM loss."""

import json

import pytest

from conftest import run_cli

from llm_tuning.data.texts import is_text_file, load_texts
from llm_tuning.errors import UserError


def test_texts_from_each_kind_of_file(tmp_path):
    txt = tmp_path / "wiki.txt"
    txt.write_text("First paragraph,\nstill the first.\n\n\n  Second one.  \n\n")
    assert load_texts(str(txt)) == ["First paragraph,\nstill the first.", "Second one."]
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "  "}\n{"text": "two"}\n')
    assert load_texts(str(jsonl)) == ["one", "two"]  # an empty text left out
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add.", "input": "1 + 1", "output": "2"},
                                  {"instruction": "Greet.", "input": "", "output": "Hello."}]))
    assert load_texts(str(alpaca)) == ["Add.\n1 + 1\n2", "Greet.\nHello."]
    assert is_text_file(str(txt)) and is_text_file(str(jsonl)) and not is_text_file(str(alpaca))


@pytest.mark.parametrize("name, body, expected", [
    ("empty.txt", "\n\n  \n", "no text in it"),
    ("bad.jsonl", '{"text": "a"}\n{"text": 3}\n', "record 1: expected an object with a string 'text', found int"),
])
def test_unusable_text_files_are_refused_naming_the_file(tmp_path, name, body, expected):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(UserError) as e:
        load_texts(str(path))
    assert str(e.value).startswith(str(path)) and expected in str(e.value)


def test_text_loss_is_transformers_loss_over_every_token_whatever_the_batch(tiny_models):
    import torch

    from llm_tuning.data.tokenize import encode_texts
    from llm_tuning.evaluate import text_loss
    from llm_tuning.infer import load_for_inference

    model, tok, _ = load_for_inference(tiny_models["llama"])
    texts = ["一个很短的句子。", "这是第二段文字，比第一段长一些，用来检查填充。", "第三段。"]
    enc = encode_texts(tok, texts)
    assert all(ids[0] == tok.bos_token_id and labels[1:] == ids[1:] for ids, labels in zip(enc.input_ids, enc.labels))
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in enc.input_ids:  # one text at a time: no padding; transformers' mean over its len-1 targets
            n = len(ids) - 1
            total += model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item() * n
            count += n
    one = text_loss(model, tok, texts, batch_size=1)
    three = text_loss(model, tok, texts, batch_size=3)
    assert one["tokens"] == three["tokens"] == count and one["texts"] == 3
    assert one["loss"] == pytest.approx(total / count, abs=1e-5)
    assert three["loss"] == pytest.approx(one["loss"], abs=1e-6)


def test_eval_on_a_text_file_prints_the_base_s_loss_the_adapter_s_and_the_difference(tiny_models, tmp_path):
    """Without an adapter there is no difference to print; --generate has nothing to answer in plain text."""
    txt = tmp_path / "general.txt"
    txt.write_text("今天天气很好。\n\n我们去公园散步吧。\n")
    r = run_cli("eval", "--model", tiny_models["llama"], "--data", str(txt))
    assert r.returncode == 0, r.stderr
    assert "| texts | 2 |" in r.stdout and "| loss |" in r.stdout and "forgetting" not in r.stdout
    bad = run_cli("eval", "--model", tiny_models["llama"], "--data", str(txt), "--generate")
    assert bad.returncode == 2 and "--generate answers instructions" in bad.stderr and "Traceback" not in bad.stderr
