"""--kernels: which loss path each device gets, `liger` on a CPU in one line (exit 2); Liger's kernels give the
CPU fused loss's values: on the CPU through Triton's interpreter (TRITON_INTERPRET=1, the whole `train` command),
on a CUDA GPU directly (skipped elsewhere, with the reason)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import SAMPLE, run_cli
from llm_tuning.errors import UserError
from llm_tuning.train.kernels import LIGER_ON_CPU, liger_available, resolve


@pytest.mark.parametrize("kernels,fast_loss,cuda,liger,want", [
    ("auto", True, False, False, "fused"),   # CPU: the project's fused loss
    ("auto", False, False, False, "stock"),  # --fast-loss false keeps its meaning
    ("none", True, False, False, "stock"),
    ("auto", True, True, True, "liger"),     # CUDA with Liger installed
    ("auto", True, True, False, "stock"),    # CUDA without: the CPU fused loss steps aside (7 % slower on an H200)
    ("none", True, True, True, "stock"),
    ("liger", True, True, True, "liger"),
])
def test_loss_path_per_device(kernels, fast_loss, cuda, liger, want):
    assert resolve(kernels, fast_loss, cuda, liger, interpreter=False) == want


def test_triton_interpreter_allows_liger_on_a_cpu_but_auto_never_takes_it():
    assert resolve("liger", True, False, True, interpreter=True) == "liger"
    assert resolve("auto", True, False, True, interpreter=True) == "fused"


def test_liger_on_a_cpu_is_refused():
    with pytest.raises(UserError) as e:
        resolve("liger", True, False, True, interpreter=False)
    assert str(e.value) == LIGER_ON_CPU
    with pytest.raises(UserError, match="pip install 'llm-tuning\\[gpu\\]'"):
        resolve("liger", True, True, False, interpreter=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: --kernels liger is allowed")
def test_cli_liger_on_cpu_exits_2_with_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--output-dir", str(tmp_path / "o"),
                "--kernels", "liger", "--max-steps", "1")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].endswith(LIGER_ON_CPU) and sum("Traceback" in l for l in lines) == 0, r.stderr


@pytest.mark.skipif(not (torch.cuda.is_available() and liger_available()),
                    reason="needs a CUDA GPU and liger-kernel (pip install 'llm-tuning[gpu]'): Liger's kernels are Triton")
@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_liger_gives_the_fused_loss_values_on_cuda(arch, tiny_models, sample_records):
    from llm_tuning.data.collate import make_collator
    from llm_tuning.data.tokenize import encode_records, prepare_tokenizer
    from llm_tuning.methods import get_method
    from llm_tuning.models import load_model, load_tokenizer
    from llm_tuning.train.fastloss import response_loss_sum
    from llm_tuning.train.kernels import apply_liger, liger_linear_cross_entropy_sum
    from helpers import make_cfg

    path = tiny_models[arch]
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    enc = encode_records(tok, sample_records[:4], max_length=256)
    batch = make_collator(tok)([{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)])
    batch = {k: v.cuda() for k, v in batch.items()}
    out = []
    for liger in (False, True):
        torch.manual_seed(0)
        model = load_model(path).cuda()
        if liger:
            assert "Liger" in apply_liger(model)
        cfg = make_cfg(path, "lora")
        cfg.lora_dropout = 0.0
        model = get_method("lora").apply(model, cfg).train()
        total, n = response_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                     linear_ce=liger_linear_cross_entropy_sum if liger else None)
        (total / n).backward()
        out.append(((total / n).item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert abs(out[0][0] - out[1][0]) <= 1e-4 * abs(out[0][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def _need_liger():
    """The interpreter tests need liger-kernel (the test extra, Linux): skip without it, fail under CI."""
    if importlib.util.find_spec("liger_kernel") is None:
        msg = "liger-kernel is not installed (the test extra installs it on Linux: pip install -e '.[test]')"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)


def _train(path, out, kernels, flags, interpret):
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    r = subprocess.run([sys.executable, "-m", "llm_tuning", "train", "--model", path, "--data", SAMPLE,
                        "--output-dir", str(out), "--method", "lora", "--max-steps", "3", "--batch-size", "2",
                        "--max-length", "128", "--base-eval", "false", "--kernels", kernels, *flags], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr, load_file(str(out / "adapter_model.safetensors")), json.load(open(out / "metrics.json"))


@pytest.mark.parametrize("arch,flags", [
    ("llama", ["--packing", "true", "--gradient-checkpointing", "true"]),  # RMSNorm, SwiGLU, RoPE on packed rows
    ("bloom", []),                                                         # LayerNorm
])
def test_liger_under_the_triton_interpreter_trains_as_the_fused_loss_does(arch, flags, tiny_models, tmp_path):
    """The whole Liger path on a CPU: layer kernels bound before LoRA wraps the base, Liger's fused linear
    cross-entropy in the Trainer's loss, three steps, the adapter saved; the same adapter as the CPU fused loss."""
    _need_liger()
    log, liger, liger_metrics = _train(tiny_models[arch], tmp_path / "liger", "liger", flags, interpret=True)
    assert "kernels: Liger (fused linear cross-entropy and layer kernels) under Triton's interpreter" in log
    assert ("Liger kernels for llama (norms, MLP, RoPE)" if arch == "llama" else "Liger LayerNorm on 6 Bloom") in log
    _, fused, fused_metrics = _train(tiny_models[arch], tmp_path / "fused", "auto", flags, interpret=False)
    assert sorted(liger) == sorted(fused) and len(fused) > 0
    for name in fused:
        assert torch.allclose(liger[name], fused[name], rtol=1e-4, atol=1e-6), name
    assert liger_metrics["train_loss"] == pytest.approx(fused_metrics["train_loss"], rel=1e-5)


BF16_CHECK = r"""
import json, os, torch
os.environ["TRITON_INTERPRET"] = "1"
from llm_tuning.train.triton_interpreter import fill_gaps
fill_gaps()
from liger_kernel.ops.swiglu import LigerSiLUMulFunction
from liger_kernel.transformers.rms_norm import LigerRMSNorm
torch.manual_seed(0)
a, b, x = (torch.randn(2, 8, 64) for _ in range(3))
bf = lambda t: t.to(torch.bfloat16)
swiglu = LigerSiLUMulFunction.apply(bf(a), bf(b)).float()
swiglu_ref = torch.nn.functional.silu(bf(a).float()) * bf(b).float()
xr = bf(x).float()
norm = LigerRMSNorm(64).to(torch.bfloat16)(bf(x)).float()
norm_ref = xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-6)
err = lambda y, r: ((y - r).abs().max() / r.abs().max()).item()
print(json.dumps({"swiglu": err(swiglu, swiglu_ref), "rmsnorm": err(norm, norm_ref)}))
"""


def test_the_interpreter_computes_bf16_values_not_their_bit_patterns():
    """Triton's interpreter stores bf16 as uint16 bits and multiplied those: Liger's SwiGLU gave ~1e+32 and bf16
    training a nan loss. With triton_interpreter's fill, bf16 kernels agree with fp32 arithmetic to bf16 rounding
    (a bf16 step is 2^-8 relative; two roundings in a row)."""
    _need_liger()
    r = subprocess.run([sys.executable, "-c", BF16_CHECK], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(0 <= e < 2 ** -7 for e in errors.values()), errors
