"""Gradient checkpointing for every method, prefix tuning included (which PEFT refuses): the layers really
are recomputed, and loss and gradients equal those of the run without checkpointing."""

import re

import pytest
import torch

from conftest import SAMPLE, run_cli
from helpers import fixed_batch, int8_inputs, make_cfg
from llm_tuning.models.checkpointing import _decoder_layers
from llm_tuning.data.tokenize import prepare_tokenizer
from llm_tuning.methods import get_method
from llm_tuning.models import load_model, load_tokenizer


def _loss_grads_and_layer_runs(path, variant, batch, checkpointing, every=1):
    cfg = make_cfg(path, variant)
    method = get_method(cfg.method)
    torch.manual_seed(0)
    cfg.gradient_checkpointing, cfg.checkpoint_every = checkpointing, every
    model = method.prepare(load_model(path), cfg)
    runs = []
    for layer in _decoder_layers(model):
        attn = next(m for n, m in layer.named_children() if "attn" in n or "attention" in n)
        attn.register_forward_hook(lambda *a: runs.append(1))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, len(runs), len(_decoder_layers(model))


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", ["prefix", "prefix-proj", "lora", "prompt-text", "ptuning-mlp", "bitfit", "ia3", "full",
                                     "dora", "vera", "oft", "lntuning"])
def test_checkpointing_recomputes_and_changes_nothing(variant, arch, tiny_models, sample_records):
    path = tiny_models[arch]
    batch = fixed_batch(prepare_tokenizer(load_tokenizer(path), log=lambda m: None), sample_records)
    loss0, grads0, runs0, layers = _loss_grads_and_layer_runs(path, variant, batch, False)
    loss1, grads1, runs1, _ = _loss_grads_and_layer_runs(path, variant, batch, True)
    assert runs0 == layers and runs1 == 2 * layers  # each attention ran again in the backward pass
    assert abs(loss0 - loss1) <= 1e-5
    assert grads0.keys() == grads1.keys() and all(g is not None for g in grads1.values())
    for k in grads0:
        assert (grads0[k] - grads1[k]).abs().max().item() <= 1e-5, k


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", ["lora", "prefix", "prompt-text"])
def test_checkpoint_every_recomputes_only_those_layers_and_changes_nothing(variant, arch, tiny_models,
                                                                         sample_records):
    """--checkpoint-every 2: layers 0, 2, ... run again in the backward, the others do not; loss and gradients
    as without checkpointing."""
    path = tiny_models[arch]
    batch = fixed_batch(prepare_tokenizer(load_tokenizer(path), log=lambda m: None), sample_records)
    loss0, grads0, runs0, layers = _loss_grads_and_layer_runs(path, variant, batch, False)
    loss2, grads2, runs2, _ = _loss_grads_and_layer_runs(path, variant, batch, True, every=2)
    assert layers >= 2
    assert runs0 == layers and runs2 == layers + (layers + 1) // 2
    assert abs(loss0 - loss2) <= 1e-5
    assert grads0.keys() == grads2.keys()
    for k in grads0:
        assert (grads0[k] - grads2[k]).abs().max().item() <= 1e-5, k


def test_prefix_with_checkpointing_trains_loads_and_generates(tiny_models, tmp_path):
    out = tmp_path / "prefix"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--method", "prefix",
                "--gradient-checkpointing", "--max-steps", "3", "--max-length", "96", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert "gradient checkpointing on (all " in r.stdout
    r = run_cli("generate", "--model", tiny_models["llama"], "--adapter", str(out), "--prompt", "说出一种水果。",
                "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr


def test_checkpoint_every_from_the_command_line(tiny_models, tmp_path):
    out = tmp_path / "lora"
    args = ("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--max-steps", "2", "--max-length", "64",
            "--output-dir", str(out), "--checkpoint-every", "2")
    r = run_cli(*args)
    assert r.returncode != 0 and not out.exists()
    assert r.stderr.strip().splitlines() == ["llm-tuning train: error: --checkpoint-every 2: needs "
                                             "--gradient-checkpointing (it says which layers to checkpoint); add it, "
                                             "or drop --checkpoint-every"]
    r = run_cli(*args, "--gradient-checkpointing")
    assert r.returncode == 0, r.stderr
    assert re.search(r"gradient checkpointing on \(\d+ of \d+ layers: one in 2\)", r.stdout), r.stdout
    assert (out / "adapter_model.safetensors").exists()


def _bytes_kept_for_backward(method, checkpointing):
    """Bytes of the tensors autograd keeps from the forward for the backward: the memory checkpointing saves."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_tuning.config import TrainConfig

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                                         num_attention_heads=8, num_key_value_heads=8))
    cfg = TrainConfig(model="-", data="-", output_dir="-", method=method, num_virtual_tokens=8)
    m = get_method(method)

    def apply(base):  # prefix: PEFT's own init here (ours reads a tokenizer from cfg.model, which is none here)
        return m.apply(base, cfg) if method != "prefix" else __import__("peft").get_peft_model(base, m.peft_config(base, cfg))

    model = m.enable_checkpointing(model, apply) if checkpointing else apply(model)
    model.train()
    ids = torch.randint(3, 1000, (4, 512))
    kept = {}

    def pack(t):
        kept[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return sum(kept.values())


@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_checkpointing_keeps_far_less_for_the_backward(method):
    """Measured, not assumed, on an 8-layer model with 4 x 512 tokens."""
    plain, checkpointed = _bytes_kept_for_backward(method, False), _bytes_kept_for_backward(method, True)
    print(f"{method}: {plain / 2**20:.0f} MiB kept for the backward without checkpointing, {checkpointed / 2**20:.0f} MiB with")
    assert checkpointed < plain / 4, (plain, checkpointed)


# ---------------------------------------------------------------- an 8-bit base


def _int8_inputs_alive(loss) -> int:
    """Bytes of the distinct tensors bitsandbytes' 8-bit matmuls hold on their autograd nodes (ctx.A on the CPU,
    ctx.tensors on CUDA) reachable from the loss: what the forward leaves for the backward outside autograd's
    saved tensors, where checkpointing cannot drop it."""
    return sum(int8_inputs(loss).values())


def _int8_run(path, variant, tokenizer, batch, checkpointing):
    """train's own model and method steps (train/loop.py) over an 8-bit base, then one forward and backward."""
    from llm_tuning.train import loop

    cfg = make_cfg(path, variant)
    cfg.quantization, cfg.gradient_checkpointing = "8bit", checkpointing
    chosen = get_method(cfg.method)
    torch.manual_seed(0)
    model = loop.method(cfg, chosen, loop.model(cfg, chosen, tokenizer))
    model.train()
    loss = model(**batch).loss
    alive = _int8_inputs_alive(loss)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, alive, cfg


def _estimated_int8_inputs(path, batch, cfg, monkeypatch, outlive):
    """The estimate's activations with the 8-bit inputs of checkpointed layers counted as kept, less without."""
    from llm_tuning.memory import activations
    from llm_tuning.memory.cpu_estimate import estimate

    def acts(rule):
        monkeypatch.setattr(activations, "int8_inputs_outlive_checkpointing", rule)
        b, n = batch["input_ids"].shape
        return estimate(path, cfg.method, "fp32", "8bit", b, n, True, cfg)["activations"]

    return acts(outlive) - acts(lambda quant, prefix: False)


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_checkpointing_an_8bit_base_keeps_none_of_its_int8_inputs(arch, tiny_models, sample_records, monkeypatch):
    """bitsandbytes' 8-bit matmul keeps its input outside autograd's saved tensors: non-reentrant checkpointing
    (before) left every layer's 8-bit inputs alive, 5.7 GiB of Llama-2-7B's 16.9 GiB peak at 4 x 512 on a GPU.
    Checkpointing an 8-bit base is reentrant now: nothing kept, loss and gradients as without checkpointing. The
    estimate counts what the old way kept (test_estimate_gpu holds that against the GPU's peak)."""
    from llm_tuning.models import checkpointing

    path = tiny_models[arch]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    batch = fixed_batch(tok, sample_records)
    loss0, grads0, _, cfg = _int8_run(path, "lora", tok, batch, False)
    loss1, grads1, alive, _ = _int8_run(path, "lora", tok, batch, True)
    assert alive == 0
    assert abs(loss0 - loss1) <= 1e-5 and grads0.keys() == grads1.keys()
    for k in grads0:
        assert (grads0[k] - grads1[k]).abs().max().item() <= 1e-5, k
    monkeypatch.setattr(checkpointing, "_int8_base", lambda model: False)  # the old, non-reentrant way
    _, _, before, _ = _int8_run(path, "lora", tok, batch, True)
    assert before > 0
    assert _estimated_int8_inputs(path, batch, cfg, monkeypatch, lambda quant, prefix: quant == "8bit") == before


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_prefix_over_an_8bit_base_keeps_its_int8_inputs_as_estimated(arch, tiny_models, sample_records, monkeypatch):
    """Prefix tuning's own checkpointing stays non-reentrant (models/checkpointing.py): its 8-bit inputs stay alive,
    and the estimate counts exactly them."""
    path = tiny_models[arch]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    batch = fixed_batch(tok, sample_records)
    _, _, alive, cfg = _int8_run(path, "prefix", tok, batch, True)
    assert alive > 0
    from llm_tuning.models.checkpointing import int8_inputs_outlive_checkpointing

    assert _estimated_int8_inputs(path, batch, cfg, monkeypatch, int8_inputs_outlive_checkpointing) == alive
