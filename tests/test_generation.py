"""Cached, batched decoding: the same tokens as the uncached reference (a full forward per token), every
prompt-learning method on Bloom and Llama, batch 1 and a batch of mixed-length prompts; the other methods
against transformers' own `generate`."""

import pytest

from llm_tuning.infer.sampling import Sampling
import torch

from llm_tuning.config import TrainConfig
from llm_tuning.data.templates import format_prompt
from llm_tuning.data.tokenize import encode_prompt, prepare_tokenizer
from llm_tuning.infer.generate import generate, generate_ids, stream_ids
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer
from helpers import generate_without_cache

PROMPT_LEARNING = {
    "prompt-text": {"method": "prompt", "prompt_init": "text"},
    "ptuning-mlp": {"method": "ptuning", "encoder": "mlp"},
    "ptuning-lstm": {"method": "ptuning", "encoder": "lstm"},
    "prefix": {"method": "prefix", "prefix_projection": False},
    "prefix-proj": {"method": "prefix", "prefix_projection": True},
}
NEW = 8


def adapter_model(path, variant, seed=0):
    """The method applied to a fresh base, every trainable weight moved well away from its start."""
    kw = {**PROMPT_LEARNING.get(variant, {}), "method": PROMPT_LEARNING.get(variant, {}).get("method", variant)}
    cfg = TrainConfig(model=path, data="-", output_dir="-", num_virtual_tokens=5, encoder_hidden_size=32, lora_r=4,
                      lora_dropout=0.0, prompt_text="下面是一条指令", **kw)
    torch.manual_seed(seed)
    model = get_method(cfg.method).apply(load_model(path), cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """conftest's tiny Llama, and a Bloom on its tokenizer with larger weights: the tiny Bloom at init_std 0.1
    answers every prompt with one repeated token, which would let a wrong decoding pass."""
    from llm_tuning.models import init_model

    bloom = str(tmp_path_factory.mktemp("lively-bloom") / "model")
    init_model("bloom", bloom, tokenizer=tiny_models["bloom"], seed=0, init_std=1.0, log=lambda m: None)
    return {"bloom": bloom, "llama": tiny_models["llama"]}


def stop_token(references):
    """A token that ends some answers early and not others (the tiny models never say eos by themselves)."""
    for t in dict.fromkeys(t for r in references for t in r):
        ends = [t in r[:-1] for r in references]
        if any(ends) and not all(ends):
            return t
    raise AssertionError(f"no token stops only some answers: {references}")


@pytest.fixture(scope="module")
def prompts(models, sample_records):
    out = {}
    for arch, path in models.items():
        tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
        ids = [encode_prompt(tok, format_prompt(r)) for r in sample_records[:4]]
        assert len({len(i) for i in ids}) >= 3  # mixed lengths: the batch is left-padded
        out[arch] = (tok, ids)
    return out


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", list(PROMPT_LEARNING))
def test_cached_decoding_equals_the_uncached_reference(variant, arch, models, prompts):
    tok, ids = prompts[arch]
    model = adapter_model(models[arch], variant)
    reference = [generate_without_cache(model, p, tok.eos_token_id, NEW) for p in ids]
    assert len({tuple(r) for r in reference}) > 1 and all(len(set(r)) > 1 for r in reference[:2])
    stop = stop_token(reference)  # as eos: rows of the batch end at different steps
    reference = [generate_without_cache(model, p, stop, NEW) for p in ids]
    assert len({len(r) for r in reference}) > 1
    batched = generate_ids(model, ids, stop, tok.pad_token_id, NEW, batch_size=8)
    assert batched == reference
    single = [generate_ids(model, [p], stop, tok.pad_token_id, NEW, batch_size=1)[0] for p in ids[:2]]
    assert single == reference[:2]
    # the adapter really acts: the base model answers differently
    base = load_model(models[arch]).eval()
    assert generate_ids(base, ids, stop, tok.pad_token_id, NEW) != reference


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", ["base", "lora", "ia3"])
def test_other_methods_decode_as_transformers_generate(variant, arch, models, prompts):
    tok, ids = prompts[arch]
    model = load_model(models[arch]).eval() if variant == "base" else adapter_model(models[arch], variant)
    width = max(len(p) for p in ids)
    x = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, width:].tolist()
    assert generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW) == out


def test_sampling_is_repeatable_with_a_seed_and_varies_without(models, prompts):
    tok, ids = prompts["llama"]
    model = adapter_model(models["llama"], "prefix")
    kw = {"do_sample": True, "temperature": 1.5, "top_p": 0.95}
    a = generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW, seed=7, **kw)
    b = generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW, seed=7, **kw)
    c = generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW, seed=8, **kw)
    assert a == b and a != c
    greedy = generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW)
    assert generate_ids(model, ids, tok.eos_token_id, tok.pad_token_id, NEW, do_sample=True, top_p=0.0,
                        seed=1) == greedy  # top_p 0 keeps only the likeliest token


def test_stream_yields_one_token_per_row_and_none_after_eos(models, prompts):
    tok, ids = prompts["bloom"]
    model = adapter_model(models["bloom"], "prompt-text")
    stop = stop_token([generate_without_cache(model, p, tok.eos_token_id, NEW) for p in ids])
    ref = [generate_without_cache(model, p, stop, NEW) for p in ids]
    steps = list(stream_ids(model, ids, stop, tok.pad_token_id, NEW))
    assert len(steps) == max(len(r) for r in ref) and len({len(r) for r in ref}) > 1
    for row, r in enumerate(ref):
        got = [s[row] for s in steps]
        assert got[:len(r)] == r and all(t is None for t in got[len(r):])


def test_generate_decodes_records(models, sample_records, prompts):
    tok, ids = prompts["llama"]
    model = adapter_model(models["llama"], "ptuning-mlp")
    answers = generate(model, tok, sample_records[:3], sampling=Sampling(NEW), batch_size=2)
    expected = [tok.decode(generate_without_cache(model, p, tok.eos_token_id, NEW), skip_special_tokens=True).strip()
                for p in ids[:3]]
    assert answers == expected
