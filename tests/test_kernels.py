"""--kernels: which loss path each device gets, `liger` on a CPU in one line (exit 2); on a CUDA GPU with
liger-kernel installed, Liger's kernels give the CPU fused loss's values (skipped elsewhere, with the reason)."""

import pytest
import torch

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
    assert resolve(kernels, fast_loss, cuda, liger) == want


def test_liger_on_a_cpu_is_refused():
    with pytest.raises(UserError) as e:
        resolve("liger", True, False, True)
    assert str(e.value) == LIGER_ON_CPU
    with pytest.raises(UserError, match="pip install 'llm-tuning\\[gpu\\]'"):
        resolve("liger", True, True, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: --kernels liger is allowed")
def test_cli_liger_on_cpu_exits_2_with_one_line(tiny_models, tmp_path):
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
    from test_methods import make_cfg

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
