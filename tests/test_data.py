"""Data formats, validation, templates, tokenisation (real Llama-2 tokenizer), collation."""

import json

import pytest

from conftest import LLAMA2_TOKENIZER, SAMPLE, need_shared
from llm_tuning.data.collate import make_collator
from llm_tuning.data.formats import load_records, split_records
from llm_tuning.data.templates import format_prompt
from llm_tuning.data.tokenize import IGNORE, encode_records, prepare_tokenizer
from llm_tuning.errors import UserError

RECS = [
    {"instruction": "把这句话翻译成英文。", "input": "今天天气很好。", "output": "The weather is nice today."},
    {"instruction": "说出一种水果。", "input": "", "output": "苹果"},
]


def test_bundled_sample_is_valid():
    data = load_records(SAMPLE)
    assert len(data.records) == 108 and data.skipped == 0
    assert sum(1 for r in data.records if r.get("history")) == 8  # the multi-turn ones, in both forms
    assert sum(1 for r in data.records if r["input"]) >= 20


def test_json_jsonl_and_saved_dataset_give_the_same_records(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(RECS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECS) + "\n", encoding="utf-8")
    import datasets

    datasets.Dataset.from_list(RECS).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECS)}).save_to_disk(str(tmp_path / "dsd"))
    for src in ("a.json", "a.jsonl", "ds", "dsd"):
        assert load_records(str(tmp_path / src)).records == RECS, src


def test_missing_input_becomes_empty(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    assert load_records(str(p)).records == [{"instruction": "x", "input": "", "output": "y"}]


@pytest.mark.parametrize("bad, message", [
    ({"instruction": "x", "input": ""}, "record 1: missing 'output'"),
    ({"instruction": "  ", "output": "y"}, "record 1: 'instruction' is empty"),
    ({"instruction": "x", "output": 3}, "record 1: 'output' must be a string, found int"),
    ({"instruction": "x", "input": ["a"], "output": "y"}, "record 1: 'input' must be a string, found list"),
    ("just text", "record 1: expected an object"),
])
def test_bad_record_is_named(tmp_path, bad, message):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([RECS[0], bad, RECS[1]], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_records(str(p))
    assert str(p) in str(e.value) and message in str(e.value) and "--skip-bad-records" in str(e.value)
    data = load_records(str(p), skip_bad_records=True)
    assert data.skipped == 1 and data.records == RECS


def test_split_is_deterministic_and_disjoint():
    recs = [{"instruction": str(i), "input": "", "output": "o"} for i in range(50)]
    tr, va = split_records(recs, 0.2, seed=1)
    assert len(va) == 10 and len(tr) == 40
    assert {r["instruction"] for r in tr}.isdisjoint({r["instruction"] for r in va})
    assert split_records(recs, 0.2, seed=1) == (tr, va)
    assert split_records(recs, 7, seed=1)[1].__len__() == 7


def test_templates():
    assert format_prompt(RECS[0]) == "Human: 把这句话翻译成英文。\n今天天气很好。\n\nAssistant: "
    assert format_prompt(RECS[1]) == "Human: 说出一种水果。\n\nAssistant: "
    # the official Llama-2-chat render: bos as text (no tokenizer given: the family's "<s>"), no space after [/INST]
    assert format_prompt(RECS[1], "llama2") == "<s>[INST] 说出一种水果。 [/INST]"
    with pytest.raises(UserError, match="--template 'nope' is unknown"):
        format_prompt(RECS[1], "nope")


@pytest.fixture(scope="module")
def llama2_tok():
    from llm_tuning.models import load_tokenizer

    return prepare_tokenizer(load_tokenizer(need_shared(LLAMA2_TOKENIZER)), log=lambda m: None)


def test_llama2_tokenizer_setup(llama2_tok):
    assert llama2_tok.eos_token_id == 2
    assert llama2_tok.pad_token_id == 2  # no pad token of its own: pad = eos
    assert llama2_tok.padding_side == "left"  # as it ships: the training guard turns it to right (test_guard)


def test_example_ends_with_eos_and_labels_cover_response_plus_eos(llama2_tok):
    enc = encode_records(llama2_tok, RECS, max_length=512)
    for rec, ids, labels in zip(RECS, enc.input_ids, enc.labels):
        assert ids[-1] == 2 and ids[0] == 1  # bos from the tokenizer, eos appended by id
        response = llama2_tok(rec["output"], add_special_tokens=False)["input_ids"] + [2]
        n_prompt = len(ids) - len(response)
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:] == response == ids[n_prompt:]
        assert llama2_tok.decode(ids[:n_prompt], skip_special_tokens=True) == format_prompt(rec)


def test_truncation_and_prompt_only_examples_dropped(llama2_tok):
    enc = encode_records(llama2_tok, RECS, max_length=12)
    assert all(len(x) <= 12 for x in enc.input_ids)
    assert enc.dropped == len(RECS) - len(enc.input_ids)
    long_prompt = {"instruction": "很长的指令" * 50, "input": "", "output": "短"}
    assert encode_records(llama2_tok, [long_prompt], max_length=20).dropped == 1


def test_collator_pads_right_with_masked_labels(llama2_tok):
    llama2_tok.padding_side = "right"
    enc = encode_records(llama2_tok, RECS, max_length=512)
    feats = [{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)]
    batch = make_collator(llama2_tok)(feats)
    n0, n1 = len(enc.input_ids[0]), len(enc.input_ids[1])
    short = 1 if n1 < n0 else 0
    n_short = min(n0, n1)
    assert batch["input_ids"].shape == (2, max(n0, n1))
    assert batch["attention_mask"][short, :n_short].all() and not batch["attention_mask"][short, n_short:].any()
    assert (batch["labels"][short, n_short:] == IGNORE).all()
    assert (batch["input_ids"][short, n_short:] == llama2_tok.pad_token_id).all()


def _padded_tokens(lengths, order, batch):
    return sum(len(order[j:j + batch]) * max(lengths[i] for i in order[j:j + batch]) for j in range(0, len(order), batch))


def _spread_lengths(n, seed=0):
    import random

    rng = random.Random(seed)
    return rng.sample(range(20, 400), n)  # distinct, so that the grouping of a single pool is unique


def test_length_grouping_pads_as_little_as_a_full_sort_on_a_small_set():
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from llm_tuning.data.sampling import length_grouped_indices

    lengths = _spread_lengths(64)
    ours = length_grouped_indices(lengths, 4, torch.Generator().manual_seed(0))
    assert sorted(ours) == list(range(64))
    by_length = sorted(range(64), key=lambda i: lengths[i])
    assert _padded_tokens(lengths, ours, 4) == _padded_tokens(lengths, by_length, 4)  # the least possible
    theirs = [_padded_tokens(lengths, get_length_grouped_indices(lengths, 4, generator=torch.Generator().manual_seed(s)), 4)
              for s in range(5)]
    assert min(theirs) > _padded_tokens(lengths, ours, 4)  # transformers pools 16 examples at a time here


def test_length_grouping_longest_first_incomplete_batch_last_random_order():
    import torch

    from llm_tuning.data.sampling import length_grouped_indices

    lengths = _spread_lengths(66)
    runs = [length_grouped_indices(lengths, 4, torch.Generator().manual_seed(s)) for s in range(3)]
    for order in runs:
        assert sorted(order) == list(range(66))
        assert max(lengths) in [lengths[i] for i in order[:4]]
        assert len(order[64:]) == 2 and set(order[64:]) == set(sorted(range(66), key=lambda i: lengths[i])[:2])
    batches = [[frozenset(order[j:j + 4]) for j in range(0, 64, 4)] for order in runs]
    assert set(batches[0]) == set(batches[1]) == set(batches[2])  # one pool: the same groups...
    assert batches[0] != batches[1] or batches[1] != batches[2]   # ...served in a different order


def test_length_grouping_pools_of_fifty_batches():
    import torch

    from llm_tuning.data.sampling import length_grouped_indices

    lengths = _spread_lengths(380, seed=1)  # 400 examples would be 2 pools of 200; 380: 200 + 180
    order = length_grouped_indices(lengths, 4, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(380))
    pooled = _padded_tokens(lengths, order, 4)
    assert _padded_tokens(lengths, sorted(range(380), key=lambda i: lengths[i]), 4) < pooled
    assert pooled < _padded_tokens(lengths, list(range(380)), 4) * 0.8


def test_trainer_batches_come_from_the_length_grouping(tiny_models, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, TrainingArguments

    from llm_tuning.methods import get_method
    from llm_tuning.train.trainer import LLMTrainer

    lengths = _spread_lengths(64)
    ds = datasets.Dataset.from_dict({"input_ids": [[5] * n for n in lengths], "labels": [[5] * n for n in lengths]})
    model = AutoModelForCausalLM.from_pretrained(tiny_models["bloom"])
    loaders = {}
    for strategy in ("group_by_length", "random"):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none",
                                 train_sampling_strategy=strategy, seed=0)
        trainer = LLMTrainer(model=model, args=args, train_dataset=ds, method=get_method("full"), fused_loss=False,
                             data_collator=lambda feats: [len(f["input_ids"]) for f in feats])
        loaders[strategy] = list(trainer.get_train_dataloader())
    grouped = loaders["group_by_length"]
    assert sorted(n for b in grouped for n in b) == sorted(lengths)
    assert max(lengths) in grouped[0]
    least = _padded_tokens(lengths, sorted(range(64), key=lambda i: lengths[i]), 4)
    assert sum(max(b) * len(b) for b in grouped) == least
    assert sum(max(b) * len(b) for b in loaders["random"]) > least * 1.2  # --group-by-length false: random order
