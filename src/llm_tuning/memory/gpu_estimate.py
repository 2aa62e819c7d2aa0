"""Peak GPU memory of a training run: `llm-tuning estimate --device cuda` ("does it fit on my 24 GB card?").

Built on the CPU estimate's tensor bytes (cpu_estimate.py: weights, adapter, gradients, AdamW states, activations
kept for the backward, the transient at the peak), with what differs on a CUDA device:
- no process RSS; instead the CUDA context (driver state, kernels, cuBLAS handles) that nvidia-smi / NVML show
  for the process: CUDA_CONTEXT, a typical figure for torch 2.x with lazy module loading on a Hopper GPU (an
  assumption: not measured by this project, which has no GPU of its own);
- the caching allocator reserves more than the tensors' peak (2 MiB / 20 MiB segment rounding, blocks split and
  kept): ALLOCATOR_OVERHEAD of the tensors;
- Bloom runs the project's SDPA attention (models/speedups.py) unless --speedups is off: the fused kernels keep
  q, k, v, its output and a logsumexp per head, not eager attention's [heads x length] probabilities per token
  and layer, plus the one bias shared by every layer; the walk models it (activations.py, `sdpa`), held against
  autograd's saved tensors on the CPU (bf16, fp32, 8-bit) within 2 %, which on CUDA is an assumption;
- the loss: with --kernels auto/liger Liger's fused linear cross-entropy, chunked like the CPU's fused loss (the
  same memory model); --kernels none the stock loss over all logits;
- loading is not a GPU peak: weights are moved (and quantised) tensor by tensor.

Held against the peaks measured on an H200 (NVML, CUDA context included; ../shared/gpu/README.md) in
tests/test_estimate_gpu.py. LLM.int8 (8-bit) measured 16.9 GiB against 14.8 GiB for fp16 with non-reentrant
checkpointing, which left every layer's 8-bit linears' inputs alive (bitsandbytes keeps them outside autograd's
saved tensors, models/checkpointing.py), 5.7 GiB at that shape; with them this model comes to 3 % under the
measurement. train checkpoints an 8-bit base reentrantly (none kept), which is unmeasured on a GPU.
"""

from __future__ import annotations

from ..models.arch import load_config
from .cpu_estimate import estimate

CUDA_CONTEXT = 512 * 2**20
ALLOCATOR_OVERHEAD = 0.05
NOTE_8BIT = (
    "8-bit on a GPU was measured only before train checkpointed an 8-bit base reentrantly (models/checkpointing.py): "
    "Llama-2-7B LoRA at 4 x 512, 16.9 GiB, 3 % above this model of that build")


def estimate_gpu(config, method, precision="fp32", quantization=None, batch_size=1, max_length=512,
                 gradient_checkpointing=False, opts=None, kernels="auto", speedups=True) -> dict:
    """Peak GPU memory in bytes: {"tensors", "reserved", "context", "total"} plus the tensor estimate by component
    it starts from (under "parts": cpu_estimate.py's, Bloom's attention walked as SDPA when speedups is on).
    kernels: the loss path as `train --kernels` picks it on CUDA (auto/liger: fused, none: stock)."""
    import dataclasses

    from ..config import TrainConfig

    if isinstance(config, str):
        config = load_config(config)
    o = opts if opts is not None else TrainConfig(model="-", data="-", output_dir="-", method=method)
    o = dataclasses.replace(o, fast_loss=(kernels != "none"))
    parts = estimate(config, method, precision, quantization, batch_size, max_length, gradient_checkpointing, o,
                   bloom_sdpa=speedups)
    tensors = float(parts["tensors"])
    reserved = tensors * (1 + ALLOCATOR_OVERHEAD)
    return {"tensors": int(tensors), "reserved": int(reserved), "context": CUDA_CONTEXT,
            "total": int(reserved + CUDA_CONTEXT), "parts": parts,
            "note": NOTE_8BIT if quantization == "8bit" else ""}
