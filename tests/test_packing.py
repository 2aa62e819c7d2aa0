"""--packing: a micro-batch's examples in one row give the padded batch's loss and gradients (Llama through
transformers' packed position ids, Bloom through the block-diagonal ALiBi bias of models/speedups.py), on the
stock loss and on the fused one; where packing cannot apply, one line."""

import pytest
import torch

from conftest import SAMPLE, run_cli
from llm_tuning.data.collate import make_collator
from llm_tuning.data.packing import check_packing, packing_collator
from llm_tuning.models.packed_attention import prepare_for_packing
from llm_tuning.data.tokenize import encode_records, prepare_tokenizer
from llm_tuning.errors import UserError
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer
from llm_tuning.train.fastloss import response_loss_sum
from helpers import make_cfg


def _batches(path, records):
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    enc = encode_records(tok, records[:4], max_length=256)
    feats = [{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)]
    padded, packed = make_collator(tok)(feats), packing_collator()(feats)
    assert (padded["attention_mask"] == 0).any() and packed["input_ids"].shape[0] == 1  # padding there, one row here
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())
    return padded, packed


def _loss_and_grads(path, method, batch, fused, checkpointing=False):
    torch.manual_seed(0)
    cfg = make_cfg(path, method)
    cfg.lora_dropout = 0.0  # the same dropout draws cannot fall on the same tokens in two layouts
    model = load_model(path)
    if "position_ids" in batch:  # as train() does with --packing
        prepare_for_packing(model)
    cfg.gradient_checkpointing = checkpointing
    model = get_method(method).prepare(model, cfg)
    model.train()
    if fused:
        total, n = response_loss_sum(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"],
                                     batch.get("position_ids"))
        loss = total / n
    else:
        loss = model(**batch).loss
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b, tol=2e-5):
    assert abs(a[0] - b[0]) <= tol, (a[0], b[0])
    for k in a[1]:
        scale = max(1.0, a[1][k].abs().max().item())
        assert (a[1][k] - b[1][k]).abs().max().item() <= tol * scale, k


@pytest.mark.parametrize("fused", [False, True], ids=["stock-loss", "fused-loss"])
@pytest.mark.parametrize("arch", ["bloom", "llama"])
# every method whose adapter lives in the model's layers (Method.packing); the variants' names are their methods'
@pytest.mark.parametrize("method", ["full", "bitfit", "lora", "ia3", "dora", "vera", "oft", "lntuning"])
def test_packed_row_gives_the_padded_loss_and_gradients(method, arch, fused, tiny_models, sample_records):
    padded, packed = _batches(tiny_models[arch], sample_records)
    _assert_same(_loss_and_grads(tiny_models[arch], method, padded, fused),
                 _loss_and_grads(tiny_models[arch], method, packed, fused))


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_packing_survives_checkpointing_recompute(arch, tiny_models, sample_records):
    """The backward reruns each layer after the forward returned: the examples' spans must come back too."""
    path = tiny_models[arch]
    padded, packed = _batches(path, sample_records)
    _assert_same(_loss_and_grads(path, "lora", padded, True, checkpointing=True),
                 _loss_and_grads(path, "lora", packed, True, checkpointing=True))


def test_packed_batch_turns_the_cache_off_or_examples_would_see_each_other(tiny_models, sample_records):
    """Why the collator passes use_cache=False: with a cache, transformers reads the row as one sequence."""
    path = tiny_models["llama"]
    padded, packed = _batches(path, sample_records)
    assert packed["use_cache"] is False
    model = load_model(path).eval()
    with torch.no_grad():
        right, want = model(**packed).loss.item(), model(**padded).loss.item()
        leaky = model(**{k: v for k, v in packed.items() if k != "use_cache"}).loss.item()
    assert model.config.use_cache and abs(right - want) <= 2e-5 and abs(leaky - want) > 1e-3


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_prompt_methods_refuse_packing_in_one_line(method):
    with pytest.raises(UserError) as e:
        check_packing(get_method(method))
    assert "\n" not in str(e.value) and f"--method {method}" in str(e.value)


def test_llama_attends_each_example_alone(tiny_models, sample_records, monkeypatch):
    """The packed row does not go through transformers' whole-row mask: SDPA runs once per example."""
    import transformers.integrations.sdpa_attention as sd

    import llm_tuning.models.packed_attention as pa

    calls = []
    real = sd.sdpa_attention_forward
    monkeypatch.setattr(sd, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or real(*a, **k))
    path = tiny_models["llama"]
    padded, packed = _batches(path, sample_records)
    model = load_model(path)
    assert "per example" in prepare_for_packing(model) and model.config._attn_implementation == pa.NAME
    with torch.no_grad():
        model(**packed)
    lengths = (padded["attention_mask"].sum(1)).tolist()
    assert calls == lengths * model.config.num_hidden_layers  # each example alone, in every layer


def test_bloom_packing_needs_the_speedups_attention():
    with pytest.raises(UserError, match="--speedups true"):
        check_packing(get_method("lora"), "bloom", speedups=False)
    check_packing(get_method("lora"), "bloom", speedups=True)
    check_packing(get_method("lora"), "llama", speedups=False, attn="sdpa")


def test_cli_refuses_prefix_packing_with_exit_2(tmp_path):
    r = run_cli("train", "--model", "unused", "--data", SAMPLE, "--output-dir", str(tmp_path / "o"),
                "--method", "prefix", "--packing", "true")
    assert r.returncode == 2
    assert "--packing true does not apply to --method prefix" in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1, r.stderr


def test_trainer_with_packing_trains_the_same_adapter(tiny_models, tmp_path):
    """Three steps of `train` with and without --packing, same data order and seed: the same LoRA weights."""
    from safetensors.torch import load_file

    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    outs = {}
    for packing in (False, True):
        out = tmp_path / f"packing{packing}"
        r = train(TrainConfig(model=tiny_models["bloom"], data=SAMPLE, method="lora", output_dir=str(out),
                              max_steps=3, batch_size=4, grad_accum=2, max_length=96, lora_dropout=0.0,
                              packing=packing, save_steps=100))
        outs[packing] = (load_file(str(out / "adapter_model.safetensors")), r.train_loss)
    assert abs(outs[True][1] - outs[False][1]) <= 1e-5
    for k in outs[True][0]:
        assert (outs[True][0][k] - outs[False][0][k]).abs().max().item() <= 1e-5, k
