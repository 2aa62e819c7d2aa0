"""Every method on tiny Bloom and tiny Llama: closed-form parameter counts, learning, save/load, merge."""

import re

import pytest

from llm_tuning.infer.sampling import Sampling
import torch

from helpers import ENC, NVT, OB, R, VARIANTS, VR, fixed_batch, make_cfg
from llm_tuning.cli import main
from llm_tuning.data.tokenize import prepare_tokenizer
from llm_tuning.methods import METHODS, check_quantizable, get_method
from llm_tuning.models import count_parameters, load_model, load_tokenizer

H, L, I, NH, NKV = 64, 2, 128, 4, 2  # the tiny sizes (models.TINY_DEFAULTS)
KVD = H // NH * NKV  # Llama key/value width with grouped-query attention


def base_total(arch, vocab):
    if arch == "bloom":  # embeddings tied to the output layer
        per_layer = 2 * H + (3 * H * H + 3 * H) + (H * H + H) + 2 * H + (4 * H * H + 4 * H) + (4 * H * H + H)
        return vocab * H + 2 * H + L * per_layer + 2 * H
    per_layer = H * H + 2 * H * KVD + H * H + 3 * H * I + 2 * H
    return vocab * H + L * per_layer + H + vocab * H


def closed_form_trainable(variant, arch, vocab):
    kvd = H if arch == "bloom" else KVD
    lstm = 2 * (4 * ENC * (H + ENC) + 8 * ENC) + 2 * (4 * ENC * (2 * ENC + ENC) + 8 * ENC)
    lora = L * R * (H + 3 * H) if arch == "bloom" else L * R * ((H + H) + (H + KVD))
    outs = 3 * H if arch == "bloom" else H + KVD  # the default targets' output widths (Bloom: qkv; Llama: q, v)
    ins = H if arch == "bloom" else 2 * H  # and their input widths
    norm = 2 * H if arch == "bloom" else H  # one norm's parameters (Bloom's LayerNorm has a bias)
    return {
        "full": base_total(arch, vocab),
        # Bloom: every bias (linear and LayerNorm); Llama: the zero biases added to q, k, v, o, gate, up, down.
        "bitfit": L * 11 * H + 2 * H if arch == "bloom" else L * (3 * H + 2 * KVD + 2 * I),
        "prompt-text": NVT * H,
        "prompt-random": NVT * H,
        "ptuning-mlp": NVT * H + (H * ENC + ENC) + (ENC * ENC + ENC) + (ENC * H + H),
        "ptuning-lstm": NVT * H + lstm + (2 * ENC * 2 * ENC + 2 * ENC) + (2 * ENC * H + H),
        "prefix": NVT * L * 2 * kvd,
        "prefix-proj": NVT * kvd + (kvd * ENC + ENC) + (ENC * L * 2 * kvd + L * 2 * kvd),
        # Bloom: query_key_value; Llama: q_proj, v_proj
        "lora": L * R * (H + 3 * H) if arch == "bloom" else L * R * ((H + H) + (H + KVD)),
        # Bloom: query_key_value output + dense_4h_to_h input; Llama: k, v outputs + down_proj input
        "ia3": L * (3 * H + 4 * H) if arch == "bloom" else L * (KVD + KVD + I),
        "rslora": lora, "pissa": lora,
        "dora": lora + L * outs,  # and a magnitude per output channel
        "vera": L * ((1 if arch == "bloom" else 2) * VR + outs),  # lambda_d (rank) and lambda_b (outputs) per target
        "oft": L * ins // OB * (OB * (OB - 1) // 2),  # per target: input / block blocks, each a skew upper triangle
        "lntuning": (2 * L + 1) * norm,  # two norms per layer and the final one
    }[variant]


def logits_of(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out[:, -batch["input_ids"].shape[1]:, :]


def train_steps(model, batch, lr, steps):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        losses.append(model(**batch).loss.item())
    return losses


@pytest.fixture(scope="module")
def batches(tiny_models, sample_records):
    out = {}
    for arch, path in tiny_models.items():
        tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
        out[arch] = (tok, fixed_batch(tok, sample_records))
    return out


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_method(variant, arch, tiny_models, batches, tmp_path):
    path = tiny_models[arch]
    tok, batch = batches[arch]
    cfg = make_cfg(path, variant)
    method = get_method(cfg.method)
    torch.manual_seed(0)
    base_logits = logits_of(load_model(path), batch)
    model = method.apply(load_model(path), cfg)

    # 1. trainable parameters: the closed form for this config
    trainable, total = count_parameters(model)
    assert trainable == closed_form_trainable(variant, arch, len(tok))
    assert total >= base_total(arch, len(tok))

    # 2. BitFit adds zero biases: before training it is the base model exactly
    if variant == "bitfit":
        assert torch.equal(logits_of(model, batch), base_logits)

    # 3. the loss on a fixed batch falls
    losses = train_steps(model, batch, method.default_lr, steps=6)
    assert losses[-1] < losses[0] - 1e-3, losses

    # 4. save -> load into a fresh base gives identical logits
    trained_logits = logits_of(model, batch)
    method.save(model, str(tmp_path / "adapter"))
    loaded = method.load(load_model(path) if variant != "full" else None, str(tmp_path / "adapter"))
    loaded_logits = logits_of(loaded, batch)
    # PEFT saves a p-tuning adapter as the encoder's *output* embeddings, computed once in another batch
    # shape, and a PiSSA adapter converted to a rank-2r LoRA on the untouched base, so those logits differ by float
    # rounding; every other method reloads bit-identically.
    tolerance = {"ptuning": 1e-5, "pissa": 1e-4}.get(cfg.method, 0.0)
    assert (loaded_logits - trained_logits).abs().max().item() <= tolerance
    assert not torch.equal(loaded_logits, base_logits)
    if cfg.method in ("pissa", "dora", "rslora", "vera", "oft", "lntuning"):  # a standard PEFT adapter
        from peft import PeftModel

        plain = PeftModel.from_pretrained(load_model(path), str(tmp_path / "adapter"))
        assert (logits_of(plain, batch) - trained_logits).abs().max().item() <= max(tolerance, 1e-6)

    # 5. merge: a plain transformers model with the same outputs
    if method.mergeable:
        merged = method.merge(loaded)
        merged.save_pretrained(str(tmp_path / "merged"))
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
        assert type(reloaded).__name__ in ("BloomForCausalLM", "LlamaForCausalLM")
        diff = (logits_of(reloaded, batch) - trained_logits).abs().max().item()
        assert diff <= 1e-4, diff


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("variant", ["prefix", "prefix-proj", "prompt-text", "ptuning-mlp", "lora", "bitfit"])
def test_generation_follows_the_adapter(variant, arch, tiny_models, batches, sample_records):
    """Greedy generation's tokens are the argmax of the adapter model's own forward, step by step (with
    transformers 5, PEFT's prefix was silently dropped by `generate`: this caught it)."""
    from llm_tuning.data.templates import format_prompt
    from llm_tuning.data.tokenize import encode_prompt
    from llm_tuning.infer import generate

    path = tiny_models[arch]
    tok, batch = batches[arch]
    cfg = make_cfg(path, variant)
    method = get_method(cfg.method)
    torch.manual_seed(0)
    model = method.apply(load_model(path), cfg)
    train_steps(model, batch, method.default_lr, steps=3)
    model.eval()
    records = sample_records[:2]
    answers = generate(model, tok, records, sampling=Sampling(4), batch_size=2)
    for rec, answer in zip(records, answers):
        ids = torch.tensor([encode_prompt(tok, format_prompt(rec))])
        expected = []
        with torch.no_grad():
            for _ in range(4):
                nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax().item()
                expected.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert answer == tok.decode(expected, skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_layers_add_the_update_in_place_and_match_peft(arch, dropout, tiny_models, batches, monkeypatch):
    """LoRA trains through FusedLoraLinear (the update added into the base output in place): same logits, loss
    and gradients as PEFT's own LoRA layer with the same weights, with a non-zero B and scaling 2. With dropout
    it is PEFT's forward that runs (same random stream, so equal too)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora.layer import Linear

    from llm_tuning.methods.lora import fused_lora_linear

    path = tiny_models[arch]
    _, batch = batches[arch]
    cfg = make_cfg(path, "lora")
    cfg.lora_dropout = dropout
    peft_calls = []
    peft_forward = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, *a, **k: peft_calls.append(1) or peft_forward(self, *a, **k))
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = load_model(path)
        config = get_method("lora").peft_config(model, cfg) if fused else LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=dropout)
        model = get_peft_model(model, config)
        layers = [m for m in model.modules() if isinstance(m, Linear)]
        assert layers and all((type(m) is fused_lora_linear()) == fused for m in layers)
        assert layers[0].scaling["default"] == 2.0
        for m in layers:  # B starts at zero; a random one makes the update count
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.5)
        model.train()
        torch.manual_seed(1)
        peft_calls.clear()
        out = model(**batch)
        out.loss.backward()
        assert len(peft_calls) == (0 if fused and dropout == 0 else len(layers))  # which forward ran
        results.append((out.logits.detach(), out.loss.item(),
                        {k: p.grad for k, p in model.named_parameters() if p.requires_grad}))
    (l1, loss1, g1), (l0, loss0, g0) = results
    assert (l1 - l0).abs().max().item() <= 1e-5 and abs(loss1 - loss0) <= 1e-6
    assert g1.keys() == g0.keys() and len(g1) == 2 * L * (1 if arch == "bloom" else 2)
    for k in g1:
        assert (g1[k] - g0[k]).abs().max().item() <= 1e-5, k


def test_lora_keeps_peft_layers_over_linear_subclasses(tiny_models):
    """bitsandbytes' quantised layers subclass nn.Linear (and a pre-quantised checkpoint has them without
    --quantization): a model with any nn.Linear subclass gets PEFT's own LoRA layers, not the in-place one."""
    from peft import get_peft_model
    from peft.tuners.lora.layer import LoraLayer

    from llm_tuning.methods.lora import fused_lora_linear

    class OtherLinear(torch.nn.Linear):
        pass

    cfg = make_cfg(tiny_models["llama"], "lora")
    for swap in (False, True):
        model = load_model(tiny_models["llama"])
        if swap:
            model.model.layers[0].mlp.down_proj.__class__ = OtherLinear  # not a LoRA target: the model alone decides
        model = get_peft_model(model, get_method("lora").peft_config(model, cfg))
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert len(layers) == 2 * L
        assert all((type(m) is fused_lora_linear()) != swap for m in layers)


def test_quantised_base_refusal_names_every_method_that_can_train_on_one(tmp_path, capsys):
    """One check (methods.check_quantizable) for train and the estimate: it refuses exactly the methods whose
    trains_on_quantized is False, and its message lists every method whose trains_on_quantized is True."""
    can = [m.name for m in METHODS.values() if m.trains_on_quantized]
    cannot = [m.name for m in METHODS.values() if not m.trains_on_quantized]
    assert {"full", "bitfit"} <= set(cannot)
    for name in METHODS:
        assert check_quantizable(name, None) is None
    for name in can:
        assert check_quantizable(name, "4bit") is None
    for name in cannot:
        commands = {"train": ["train", "--model", "m", "--data", "d.json", "--method", name, "--quantization", "8bit",
                              "--output-dir", str(tmp_path / "out")],
                    "estimate": ["estimate", "--model", "llama-2-7b", "--method", name, "--precision", "fp16",
                                 "--quantization", "8bit"]}
        for command, argv in commands.items():
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"llm-tuning {command}: error: --method {name} cannot train on a --quantization "
                                  "8bit base") and "\n" not in err
            listed = re.search(r"use one of (.+?) \(", err).group(1).split(", ")
            assert listed == can, err
        assert not (tmp_path / "out").exists()
