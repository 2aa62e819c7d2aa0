"""The pre-flight guard: each case fires on the bad configuration and stays silent on the good one."""

import pytest

from conftest import LLAMA2_TOKENIZER, need_shared
from llm_tuning.config import TrainConfig
from llm_tuning.data.collate import make_collator
from llm_tuning.data.tokenize import Encoded, encode_records, prepare_tokenizer
from llm_tuning.errors import UserError
from llm_tuning.train.guard import preflight
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer

RECS = [{"instruction": "说出一种水果。", "input": "", "output": "苹果"},
        {"instruction": "Say hi.", "input": "", "output": "Hi there, nice to meet you!"}]


@pytest.fixture
def setup(tiny_models):
    path = tiny_models["llama"]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    tok.padding_side = "right"
    cfg = TrainConfig(model=path, data="-", output_dir="-", method="lora", max_length=128)
    model = get_method("lora").apply(load_model(path), cfg)
    return tok, encode_records(tok, RECS, max_length=128), model, cfg


def _run(tok, enc, model, cfg, eps=1e-8, collator=None):
    logs = []
    fixes = preflight(tok, enc.input_ids, enc.labels, model, cfg, eps, collator or make_collator(tok), log=logs.append)
    return fixes, logs


def test_good_setup_is_silent(setup):
    assert _run(*setup) == ([], [])


def test_left_padding_is_fixed_and_reported():
    tok = prepare_tokenizer(load_tokenizer(need_shared(LLAMA2_TOKENIZER)), log=lambda m: None)
    assert tok.padding_side == "left"  # as Llama-2's tokenizer ships
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    cfg = TrainConfig(model="-", data="-", output_dir="-", method="full", max_length=128)
    fixes, logs = _run(tok, encode_records(tok, RECS, max_length=128), model, cfg)
    assert tok.padding_side == "right" and fixes and "padding side was 'left'" in logs[0]


def test_missing_eos_is_refused(setup):
    tok, enc, model, cfg = setup
    broken = Encoded([ids[:-1] for ids in enc.input_ids], [l[:-1] for l in enc.labels], 0)
    with pytest.raises(UserError, match=r"2 tokenised examples \(first: 0\) do not end with eos"):
        _run(tok, broken, model, cfg)


def test_unmasked_padding_is_refused(setup):
    tok, enc, model, cfg = setup
    from transformers import DataCollatorForSeq2Seq

    unmasked = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=tok.pad_token_id)
    with pytest.raises(UserError, match="is not masked out of the labels"):
        _run(tok, enc, model, cfg, collator=unmasked)


def test_zero_trainable_parameters_refused(setup):
    tok, enc, model, cfg = setup
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UserError, match="trains 0 parameters"):
        _run(tok, enc, model, cfg)


def test_unsafe_fp16_epsilon_refused(setup):
    tok, enc, model, cfg = setup
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.half()
    with pytest.raises(UserError, match="--adam-epsilon 1e-08 rounds to 0 for fp16"):
        _run(tok, enc, model, cfg, eps=1e-8)
    assert _run(tok, enc, model, cfg, eps=1e-4) == ([], [])


def test_guard_reads_a_dataset_like_lists(setup):
    from llm_tuning.data.tokenize import to_dataset

    tok, enc, model, cfg = setup
    ds = to_dataset(enc)
    assert preflight(tok, ds, ds, model, cfg, 1e-8, make_collator(tok), log=lambda m: None) == []
    broken = to_dataset(Encoded([ids[:-1] for ids in enc.input_ids], [l[:-1] for l in enc.labels], 0))
    with pytest.raises(UserError, match="do not end with eos"):
        preflight(tok, broken, broken, model, cfg, 1e-8, make_collator(tok), log=lambda m: None)
