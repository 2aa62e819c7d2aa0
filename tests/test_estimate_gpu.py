"""`estimate --device cuda` against the peak GPU memory measured on an H200 (NVML, CUDA context included).

Source: ../shared/gpu/README.md, "Measured 2026-12-04 on one H200", random weights at the
real shapes: Llama-2-7B LoRA q/v + gradient checkpointing, batch 4 x 512: fp16 15,127 MiB, 4-bit (bf16)
7,569 MiB, 8-bit (fp16) 17,259 MiB; Bloom-1b4 bf16 batch 4 x 512, no checkpointing: LoRA 6,251 MiB, and the other
methods (BLOOM_METHODS). Those runs used the fused loss (train's default), so the estimate is asked for the
fused-loss path (kernels auto).
Their records are not all 512 tokens long (Bloom: Chinese alpaca records, length-grouped), the estimate assumes
full rows: the goal is +-10 %, the issue's target."""

import pytest

from llm_tuning.config import TrainConfig
from llm_tuning.memory.gpu_estimate import estimate_gpu
from llm_tuning.memory.sizing import largest_fitting

MIB = 2**20
MEASURED = {  # (model, precision, quantisation, checkpointing) -> peak MiB measured
    ("llama-2-7b", "fp16", None, True): 15127,
    ("llama-2-7b", "bf16", "4bit", True): 7569,
    ("bloom-1b4", "bf16", None, False): 6251,
}


def _est(model, precision, quant, gc, kernels="auto", batch=4):
    o = TrainConfig(model=model, data="-", output_dir="-", method="lora", precision=precision, quantization=quant,
                    batch_size=batch, max_length=512, gradient_checkpointing=gc)
    return estimate_gpu(model, "lora", precision, quant, batch, 512, gc, o, kernels=kernels)


@pytest.mark.parametrize("key", list(MEASURED), ids=lambda k: f"{k[0]}-{k[2] or k[1]}")
def test_estimate_within_10_percent_of_the_h200_peaks(key):
    got = _est(*key)["total"] / MIB
    assert abs(got / MEASURED[key] - 1) <= 0.10, (got, MEASURED[key])


def test_8bit_peak_measured_is_the_estimate_plus_the_int8_inputs_checkpointing_kept(monkeypatch):
    """LLM.int8 measured 17,259 MiB, above fp16, checkpointed non-reentrantly, which left each layer's
    8-bit linears' inputs alive (models/checkpointing.py; test_checkpointing shows it on the CPU): with those,
    the estimate is within 10 % of the measurement. train now checkpoints an 8-bit base reentrantly, and the
    estimate drops them again: 32 layers x 2,048 tokens x (3 x 4,096 + 11,008) fp32, plus the allocator's 5 %."""
    import llm_tuning.memory.activations as activations

    now = _est("llama-2-7b", "fp16", "8bit", True)["total"]
    monkeypatch.setattr(activations, "int8_inputs_outlive_checkpointing", lambda quant, prefix: quant == "8bit")
    then = _est("llama-2-7b", "fp16", "8bit", True)["total"]
    assert abs(then / MIB / 17259 - 1) <= 0.10, then / MIB
    assert then - now == pytest.approx(32 * 2048 * (3 * 4096 + 11008) * 4 * 1.05, abs=1)
    assert now < _est("llama-2-7b", "fp16", None, True)["total"]  # below fp16 once they are gone


# The same H200 run, every method at the Bloom-1b4 shape: bf16, batch 4 x 512, 12 steps, no checkpointing, the
# method's defaults (10 virtual tokens, ...). LoRA is above (6,251).
BLOOM_METHODS = {"ptuning-lstm": (8079, "ptuning", {"encoder": "lstm"}), "bitfit": (5767, "bitfit", {}),
                 "ia3": (7939, "ia3", {}), "lora-8bit": (10963, "lora", {}),
                 "prompt": (6001, "prompt", {}), "prefix-projection": (9815, "prefix", {"prefix_projection": True})}
MISSED = {  # estimated below the H200's peak by more than 10 %; the walk matches the CPU's autograd for each
    "prompt": "-10.4 %: 10 virtual tokens make the key length 522 (docs/gpu.md, GPU memory); unsettled without a GPU",
    "prefix-projection": "-16.4 %: key length 522 too, and a 768 MiB encoder gradient; unsettled without a GPU",
    "lora-8bit": "-13.5 %: on the CPU the same walk is bitsandbytes' and autograd's bytes within 0.3 % "
                 "(test_estimate.py); what CUDA keeps beyond that (fp32 SDPA runs the memory-efficient kernel) "
                 "is unmeasured"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=MISSED[n]))
                                  if n in MISSED else n for n in BLOOM_METHODS])
def test_every_bloom_method_within_10_percent_of_the_h200_peak(name):
    measured, method, kw = BLOOM_METHODS[name]
    quant = "8bit" if name.endswith("8bit") else None
    o = TrainConfig(model="bloom-1b4", data="-", output_dir="-", method=method, precision="bf16", quantization=quant,
                    batch_size=4, max_length=512, **kw)
    got = estimate_gpu("bloom-1b4", method, "bf16", quant, 4, 512, False, o)["total"] / MIB
    assert abs(got / measured - 1) <= 0.10, (got, measured)


def test_bloom_sdpa_keeps_less_than_eager_and_the_stock_loss_more():
    """`estimate --speedups false` walks transformers' eager Bloom attention, as train then runs it: the
    probabilities of 24 layers come back; the stock loss keeps B*L*V fp32 logits."""
    from llm_tuning.config import EstimateConfig
    from llm_tuning.memory.estimate import estimate_config

    def est(**kw):
        return estimate_config(EstimateConfig(model="bloom-1b4", precision="bf16", batch_size=4, max_length=512,
                                              device="cuda", **kw))

    sdpa, eager = est(), est(speedups=False)
    assert sdpa["total"] == _est("bloom-1b4", "bf16", None, False)["total"]
    assert sdpa["tensors"] < eager["tensors"] - 2 * 2**30
    assert est(kernels="none")["total"] > sdpa["total"]


def test_largest_batch_that_fits_a_24_gib_card():
    b = largest_fitting(lambda n: _est("llama-2-7b", "fp16", None, True, batch=n)["total"] <= 24 * 2**30, 256)
    assert b >= 1
    assert _est("llama-2-7b", "fp16", None, True, batch=b)["total"] <= 24 * 2**30
    assert _est("llama-2-7b", "fp16", None, True, batch=b + 1)["total"] > 24 * 2**30


@pytest.mark.parametrize("model,precision", [("llama-2-7b", "fp16"), ("bloom-1b4", "bf16")])
def test_partial_checkpointing_lies_between_every_layer_and_none(model, precision, capsys):
    """--checkpoint-every N on CUDA: the layers kept add their activations (Bloom: with the SDPA attention's own
    saved tensors), so the peak grows with N up to no checkpointing; the text output lists the choices."""
    from llm_tuning.config import EstimateConfig
    from llm_tuning.cli.estimate import print_estimate

    def total(n, gc=True):
        o = TrainConfig(model=model, data="-", output_dir="-", precision=precision, batch_size=4, max_length=512,
                        gradient_checkpointing=gc, checkpoint_every=n)
        return estimate_gpu(model, "lora", precision, None, 4, 512, gc, o)["total"]

    every = [total(n) for n in (1, 2, 4, 8)]
    assert every == sorted(every) and every[0] < every[-1] < total(1, gc=False), every
    cfg = EstimateConfig(model=model, precision=precision, batch_size=4, max_length=512, gradient_checkpointing=True,
                         device="cuda", json=False)
    print_estimate(cfg)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.strip() == ("total by --checkpoint-every: " + ", ".join(
        f"{n}: {t / 2**30:.2f} GiB" for n, t in zip((1, 2, 4, 8), every)) + f", none: {total(1, False) / 2**30:.2f} GiB")
