"""Real learning: eos-terminated generation with the Llama-2 tokenizer, and every method lowering held-out loss
on the pretrained stories260K model with the English alpaca records."""

import json

import pytest

from llm_tuning.infer.engine import Sampling
import torch

from conftest import EN_DATA, LLAMA2_TOKENIZER, STORIES, need_shared
from llm_tuning.config import TrainConfig
from llm_tuning.data.formats import load_records, split_records
from llm_tuning.data.templates import format_prompt
from llm_tuning.data.tokenize import encode_prompt
from llm_tuning.train.heldout import response_loss
from llm_tuning.infer import generate, load_for_inference
from llm_tuning.train import train

MEMO = [
    {"instruction": "Say hello.", "input": "", "output": "Hello there!"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Count to three.", "input": "", "output": "One, two, three."},
]


def test_memorised_answers_stop_at_eos(tmp_path):
    from llm_tuning.models import init_model

    base = str(tmp_path / "base")
    init_model("llama", base, tokenizer=need_shared(LLAMA2_TOKENIZER), init_std=0.1, log=lambda m: None)
    data = tmp_path / "memo.json"
    data.write_text(json.dumps(MEMO))
    train(TrainConfig(model=base, data=str(data), method="full", output_dir=str(tmp_path / "out"), max_steps=60,
                      batch_size=3, lr=3e-3, save_steps=1000, seed=0))
    model, tok, _ = load_for_inference(base, str(tmp_path / "out"))
    max_new = 30
    answers = generate(model, tok, MEMO, sampling=Sampling(max_new))
    assert answers == [r["output"] for r in MEMO]
    for rec in MEMO:
        ids = torch.tensor([encode_prompt(tok, format_prompt(rec))])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        assert new[-1] == 2 and len(new) < max_new  # it stopped by itself


LEARN = {
    "full": {}, "bitfit": {}, "lora": {}, "ia3": {},
    "prompt": dict(prompt_text="Answer the instruction below."),
    "ptuning": {}, "prefix": dict(prefix_projection=True),
}


@pytest.fixture(scope="module")
def en_split():
    records = load_records(need_shared(EN_DATA)).records[:200]
    need_shared(STORIES)
    return split_records(records, 40, seed=0)


@pytest.mark.parametrize("method", list(LEARN))
def test_each_method_lowers_held_out_loss_on_stories260k(method, en_split, tmp_path):
    train_recs, val_recs = en_split
    data = tmp_path / "train.json"
    data.write_text(json.dumps(train_recs))
    model, tok, _ = load_for_inference(STORIES)
    before = response_loss(model, tok, val_recs, max_length=128, batch_size=20)["loss"]
    train(TrainConfig(model=STORIES, data=str(data), method=method, output_dir=str(tmp_path / "out"), max_steps=40,
                      batch_size=8, max_length=128, save_steps=1000, seed=0, **LEARN[method]))
    model, tok, _ = load_for_inference(STORIES, str(tmp_path / "out"))
    after = response_loss(model, tok, val_recs, max_length=128, batch_size=20)["loss"]
    print(f"{method}: held-out loss {before:.4f} -> {after:.4f}")
    assert after < before - 0.01, (before, after)
