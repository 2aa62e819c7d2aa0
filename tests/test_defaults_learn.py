"""Every method variant learns at its defaults: on the pretrained stories260K with the English alpaca records, 60
steps with nothing but the variant chosen (the method's own learning rate and initialisation, batch size 4), the
held-out loss ends at least 0.1 below the untouched model's on the same held-out records.

max_length 128 (one choice for all variants) keeps the 48 runs (two at a time) to a few minutes;
benchmarks/methods_at_defaults.py measures the same at the default 512 (docs/methods.md). The soft prompt is also
trained at the default max length 512 and scored on records 400-499, which neither train nor chose its default rate
(benchmarks/soft_prompt_defaults.py chose it on the 40 records held out here; docs/methods.md)."""

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from conftest import EN_DATA, STORIES, need_shared
from llm_tuning.config import TrainConfig
from llm_tuning.data.formats import load_records, split_records
from llm_tuning.infer import load_for_inference
from llm_tuning.methods import VARIANTS
from llm_tuning.train import train
from llm_tuning.evaluate import response_loss

MAX_LENGTH = 128
STEPS = 60
SEEDS = [0, 1, 2]  # the training seed: initialisation (soft prompts, LoRA's A, ...), order, dropout
DEFAULT_LENGTH = 512  # train's default max length
AT_DEFAULT_LENGTH = ["prompt-random"]


def _threads_1():
    torch.set_num_threads(1)  # a 260K-parameter model: threads only add overhead (and contend with others)


def _learn(variant: str, seed: int, length: int, data: str, val_recs: list, out: str) -> float:
    """Train one variant at its defaults (in a worker process) and return its held-out loss."""
    cfg = TrainConfig(model=STORIES, data=data, output_dir=out, max_steps=STEPS, max_length=length,
                      save_steps=10**6, seed=seed, quiet=True, **VARIANTS[variant])
    result = train(cfg)
    assert result.steps == STEPS
    model, tok, _ = load_for_inference(STORIES, cfg.output_dir)
    return response_loss(model, tok, val_recs, max_length=length)["loss"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """{max length: the base model's held-out loss}, and {(variant, seed, max length): the future of its held-out
    loss after training}: the 51 trainings run two at a time in worker processes of one thread each (both cores
    busy), the longer ones first."""
    records = load_records(need_shared(EN_DATA)).records
    need_shared(STORIES)
    train_recs, val_recs = split_records(records[:400], 40, seed=0)
    heldout = {MAX_LENGTH: val_recs, DEFAULT_LENGTH: records[400:500]}
    folder = tmp_path_factory.mktemp("defaults-learn")
    data = folder / "train.json"
    data.write_text(json.dumps(train_recs))
    threads = torch.get_num_threads()
    _threads_1()
    model, tok, _ = load_for_inference(STORIES)
    base = {n: response_loss(model, tok, heldout[n], max_length=n)["loss"] for n in heldout}
    torch.set_num_threads(threads)
    cases = [(v, s, DEFAULT_LENGTH) for s in SEEDS for v in AT_DEFAULT_LENGTH]
    cases += [(v, s, MAX_LENGTH) for s in SEEDS for v in VARIANTS]
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), multiprocessing.get_context("spawn"),
                             initializer=_threads_1) as pool:
        futures = {(v, s, n): pool.submit(_learn, v, s, n, str(data), heldout[n], str(folder / f"{v}-{s}-{n}"))
                   for v, s, n in cases}
        yield base, futures


def _check(learned, variant, seed, length):
    bases, futures = learned
    base, after = bases[length], futures[(variant, seed, length)].result()
    print(f"{variant} seed {seed} length {length}: held-out loss {base:.4f} -> {after:.4f} ({after - base:+.4f})")
    assert after < base - 0.1, (variant, seed, length, base, after)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_learns_at_its_defaults(variant, seed, learned):
    _check(learned, variant, seed, MAX_LENGTH)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", AT_DEFAULT_LENGTH)
def test_soft_prompt_learns_at_the_default_max_length(variant, seed, learned):
    _check(learned, variant, seed, DEFAULT_LENGTH)
