"""Bloom's SDPA attention and torch tanh-GeLU (speedups.py) compute what transformers' own modules compute:
logits and every gradient, with right padding, with a prefix cache (prefix tuning) and when generating."""

import pytest
import torch

from llm_tuning.data.collate import make_collator
from llm_tuning.data.tokenize import encode_records, prepare_tokenizer
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer
from helpers import make_cfg


def _batch(path, records):
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    enc = encode_records(tok, records, max_length=256)
    batch = make_collator(tok)([{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)])
    assert (batch["attention_mask"] == 0).any()  # right padding present
    return tok, batch


def test_it_swaps_every_bloom_layer_and_leaves_llama_alone(tiny_models):
    from transformers.models.bloom.modeling_bloom import BloomGelu

    fast = load_model(tiny_models["bloom"])
    layers = fast.config.n_layer
    assert sum(isinstance(m, torch.nn.GELU) for m in fast.modules()) == layers
    assert not any(isinstance(m, BloomGelu) for m in fast.modules())
    assert sum("forward" in vars(m) for m in fast.modules()) == layers  # one attention per layer
    assert set(fast.state_dict()) == set(load_model(tiny_models["bloom"], speedups=False).state_dict())
    from llm_tuning.models.speedups import speed_up

    assert speed_up(load_model(tiny_models["llama"], speedups=False)) == 0


def test_gelu_is_blooms_formula_and_derivative():
    from transformers.models.bloom.modeling_bloom import BloomGelu

    x = torch.linspace(-6, 6, 2001, requires_grad=True)
    y0 = BloomGelu()(x)
    (g0,) = torch.autograd.grad(y0.sum(), x)
    y1 = torch.nn.GELU(approximate="tanh")(x)
    (g1,) = torch.autograd.grad(y1.sum(), x)
    assert (y0 - y1).abs().max().item() <= 1e-6
    assert (g0 - g1).abs().max().item() <= 2e-6  # fp32 rounding of the folded constant 0.1070322243


@pytest.mark.parametrize("method", ["lora", "full", "prefix"])
def test_same_logits_and_gradients_as_transformers_bloom(method, tiny_models, sample_records):
    path = tiny_models["bloom"]
    tok, batch = _batch(path, sample_records[:4])
    results = []
    for speedups in (False, True):
        torch.manual_seed(0)
        model = get_method(method).apply(load_model(path, speedups=speedups), make_cfg(path, method))
        model.train()
        out = model(**batch)
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((out.logits.detach(), out.loss.item(), grads))
    (lg0, l0, g0), (lg1, l1, g1) = results
    real = batch["attention_mask"].bool()
    assert (lg0[real] - lg1[real]).abs().max().item() <= 1e-4
    assert abs(l0 - l1) <= 1e-5
    assert g0 and set(g0) == set(g1)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-6), k


def test_generation_with_the_kv_cache_is_unchanged(tiny_models):
    path = tiny_models["bloom"]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    ids = torch.tensor([tok("请写一首诗")["input_ids"]])
    outs = []
    for speedups in (False, True):
        model = load_model(path, speedups=speedups).eval()
        with torch.no_grad():
            outs.append(model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                       pad_token_id=tok.pad_token_id))
    assert outs[0].shape[1] == ids.shape[1] + 12
    assert torch.equal(outs[0], outs[1])
