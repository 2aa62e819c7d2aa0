"""Real learning: eos-terminated generation with the Llama-2 tokenizer. (Every method lowering the held-out loss of
the pretrained stories260K is tests/test_defaults_learn.py: every variant at its defaults, three seeds.)"""

import json

from llm_tuning.infer.sampling import Sampling
import torch

from conftest import LLAMA2_TOKENIZER, need_shared
from llm_tuning.config import TrainConfig
from llm_tuning.data.templates import format_prompt
from llm_tuning.data.tokenize import encode_prompt
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
