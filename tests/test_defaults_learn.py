"""Every method variant learns at its defaults: on the pretrained stories260K with the English alpaca records, 60
steps with nothing but the variant chosen (the method's own learning rate and initialisation, batch size 4), the
held-out loss ends at least 0.1 below the untouched model's on the same held-out records.

max_length 128 (one choice for all variants) keeps the ten runs to about a minute; benchmarks/methods_at_defaults.py
measures the same at the default 512 (docs/methods.md)."""

import json

import pytest
import torch

from conftest import EN_DATA, STORIES, need_shared
from llm_tuning.config import TrainConfig
from llm_tuning.data.formats import load_records, split_records
from llm_tuning.infer import load_for_inference
from llm_tuning.methods import VARIANTS
from llm_tuning.train import train
from llm_tuning.train.heldout import response_loss

MAX_LENGTH = 128
STEPS = 60
SEEDS = [0, 1, 2]  # the training seed: initialisation (soft prompts, LoRA's A, ...), order, dropout


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Training file, held-out records, and the base model's held-out loss (computed once)."""
    records = load_records(need_shared(EN_DATA)).records[:400]
    need_shared(STORIES)
    train_recs, val_recs = split_records(records, 40, seed=0)
    data = tmp_path_factory.mktemp("defaults-learn") / "train.json"
    data.write_text(json.dumps(train_recs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 260K-parameter model: threads only add overhead (and contend with others)
    model, tok, _ = load_for_inference(STORIES)
    base = response_loss(model, tok, val_recs, max_length=MAX_LENGTH)["loss"]
    yield str(data), val_recs, base
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_learns_at_its_defaults(variant, seed, setting, tmp_path):
    data, val_recs, base = setting
    options = dict(VARIANTS[variant])
    cfg = TrainConfig(model=STORIES, data=data, output_dir=str(tmp_path / "out"), max_steps=STEPS,
                      max_length=MAX_LENGTH, save_steps=10**6, seed=seed, quiet=True, **options)
    result = train(cfg)
    assert result.steps == STEPS
    model, tok, _ = load_for_inference(STORIES, cfg.output_dir)
    after = response_loss(model, tok, val_recs, max_length=MAX_LENGTH)["loss"]
    print(f"{variant} seed {seed}: held-out loss {base:.4f} -> {after:.4f} ({after - base:+.4f})")
    assert after < base - 0.1, (variant, base, after)
