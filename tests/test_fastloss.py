"""The response-only loss computes the same loss and gradients as the stock causal-LM forward, with the
prompt masked, on Bloom and Llama, for the methods that use it."""

import pytest
import torch

from llm_tuning.data.tokenize import prepare_tokenizer
from llm_tuning.train.fastloss import response_loss_sum
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer
from helpers import VARIANTS, make_cfg


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("method", ["full", "bitfit", "lora", "ia3", "prompt-text", "ptuning-lstm", "prefix",
                                    "prefix-proj", "dora", "vera", "oft", "lntuning"])
def test_same_loss_and_gradients_as_the_stock_forward(method, arch, chunked, tiny_models, sample_records, monkeypatch):
    assert get_method(VARIANTS[method]["method"]).fast_loss
    if chunked:  # 7 positions per chunk: many chunks, and a ragged last one; vocabulary blocks of 256 of 600
        from llm_tuning.memory import loss_chunks

        monkeypatch.setattr(loss_chunks, "CHUNK_ELEMENTS", 7 * len(load_tokenizer(tiny_models[arch])))
        monkeypatch.setattr(loss_chunks, "VOCAB_BLOCK", 256)
    path = tiny_models[arch]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    from llm_tuning.data.collate import make_collator
    from llm_tuning.data.tokenize import encode_records

    enc = encode_records(tok, sample_records[:4], max_length=256)
    batch = make_collator(tok)([{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)])
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()  # prompt and padding present
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        cfg = make_cfg(path, method)
        model = get_method(cfg.method).apply(load_model(path), cfg)
        model.train()
        if fast:
            total, n = response_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss = total / n
            assert int(n) == int((batch["labels"][:, 1:] != -100).sum())
        else:
            loss = model(**batch).loss
        loss.backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert abs(l0 - l1) <= 1e-5
    for k in g0:
        assert (g0[k] - g1[k]).abs().max().item() <= 1e-5, k


def test_trainer_uses_it_and_trains_the_same(tiny_models, tmp_path):
    """Two short Trainer runs, fast loss on and off, end with the same adapter (same data order and seed)."""
    from safetensors.torch import load_file

    from conftest import SAMPLE
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    outs = {}
    for fast in (True, False):
        out = tmp_path / f"fast{fast}"
        train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method="lora", output_dir=str(out), max_steps=3,
                          batch_size=4, grad_accum=2, max_length=96, lora_dropout=0.0, fast_loss=fast, save_steps=100))
        outs[fast] = load_file(str(out / "adapter_model.safetensors"))
    for k in outs[True]:
        assert (outs[True][k] - outs[False][k]).abs().max().item() <= 1e-5, k


@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_matches_cross_entropy_even_for_hopeless_targets(bias):
    """The fused output layer + cross-entropy against torch's, with some targets whose probability underflows
    fp32 (a loss of ~150 nats): those rows take the exact log-softmax path, so no loss is inf or off."""
    from llm_tuning.train.fastloss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(9, 16, requires_grad=True)
    target = torch.randint(0, 50, (9,))
    with torch.no_grad():
        hidden[:3] = 0.0
        hidden[:3, 0] = 30.0
        head.weight[:, 0] = 0.0
        head.weight[target[:3], 0] = -5.0  # logit -150 for the first three targets, 0 elsewhere
    ref_h = hidden.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(head(ref_h), target, reduction="sum")
    ref.backward()
    ref_w = head.weight.grad.clone()
    head.weight.grad = None
    out = linear_cross_entropy_sum(hidden, head, target)
    out.backward()
    assert torch.isfinite(out) and ref.item() > 400
    assert abs(out.item() - ref.item()) <= 1e-4 * ref.item()
    assert torch.allclose(hidden.grad, ref_h.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, ref_w, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_vocabulary_blocks_redo_rows_whose_exponentials_overflow(bias, monkeypatch):
    """A frozen output layer goes through vocabulary blocks shifted by the row's target logit or its largest logit
    in the first block. Rows where a later block has a logit ~120 above both would overflow: they must come out
    as torch's cross-entropy all the same (redone by row chunks), and the other rows unchanged."""
    import llm_tuning.train.fastloss as fl
    from llm_tuning.memory import loss_chunks

    monkeypatch.setattr(loss_chunks, "VOCAB_BLOCK", 16)  # blocks 0-15, 16-31, 32-47, 48-49
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).requires_grad_(False)
    hidden = torch.randn(9, 16, requires_grad=True)
    target = torch.randint(0, 16, (9,))  # targets in the first block
    with torch.no_grad():
        hidden[:4, 0] = 40.0
        head.weight[:16, 0] = 0.0
        head.weight[40, 0] = 3.0  # logit ~120 for vocabulary entry 40 in rows 0-3, beyond fp32's exp range
    calls = []
    chunks = fl._by_row_chunks
    monkeypatch.setattr(fl, "_by_row_chunks", lambda h, *a: calls.append(len(h)) or chunks(h, *a))
    ref_h = hidden.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(head(ref_h), target, reduction="sum")
    ref.backward()
    out = fl.linear_cross_entropy_sum(hidden, head, target)
    out.backward()
    assert calls == [4]  # the four overflowing rows, and only those, took the row-chunk path
    assert ref.item() > 400 and abs(out.item() - ref.item()) <= 1e-5 * ref.item()
    assert torch.allclose(hidden.grad, ref_h.grad, atol=1e-6)


def test_fused_head_gradient_scales_with_the_loss_and_refuses_a_second_backward():
    """The gradients are formed in the forward and scaled in place in the backward: a scaled loss gives scaled
    gradients (the Trainer divides by the learned tokens), and a second backward through the same graph is an
    error rather than gradients scaled twice."""
    from llm_tuning.train.fastloss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(7, 16, requires_grad=True)
    target = torch.randint(0, 50, (7,))
    ref_h = hidden.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(head(ref_h), target, reduction="sum") / 7
    ref.backward()
    ref_w, ref_b = head.weight.grad.clone(), head.bias.grad.clone()
    head.weight.grad = head.bias.grad = None
    out = linear_cross_entropy_sum(hidden, head, target) / 7
    out.backward(retain_graph=True)
    assert torch.allclose(hidden.grad, ref_h.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, ref_w, atol=1e-6) and torch.allclose(head.bias.grad, ref_b, atol=1e-6)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out.backward()


def test_fused_head_with_no_learned_position_gives_zero_gradients():
    from llm_tuning.train.fastloss import linear_cross_entropy_sum

    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(0, 16, requires_grad=True)
    garbage = torch.full((50, 16), float("nan"))  # freed memory an uninitialised gradient would likely reuse
    del garbage
    out = linear_cross_entropy_sum(hidden, head, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0 and hidden.grad.shape == (0, 16)
    assert torch.count_nonzero(head.weight.grad) == 0 and torch.count_nonzero(head.bias.grad) == 0
