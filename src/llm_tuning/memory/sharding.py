"""The estimate per process when N processes train one model (`estimate --processes N --zero S`).

From the one-process estimate (cpu_estimate.py; each process takes its own batch, so the activations stay):
- DDP (--zero 0): every process holds everything, plus DDP's gradient buckets, a flat copy of every gradient
  that the all-reduce runs on.
- DeepSpeed ZeRO: stage 1 shards the AdamW states over the processes, stage 2 also the gradients, stage 3 also
  the weights. DeepSpeed keeps an fp32 master copy of this process's part of the trained weights (also when they
  are fp32), and copies the trained weights into its own flat buffers: all of them under stages 1-2, this
  process's part under stage 3. The weights as loaded are counted whole under every stage: llm-tuning loads the
  model in each process before DeepSpeed starts (zero3_init_flag does not partition that load,
  docs/distributed.md), and the measured peaks are not explained without them (not traced further).
Held against per-process peaks of full fine-tuning on 2 CPU processes in tests/test_estimate.py (docs/memory.md).
"""

from __future__ import annotations

from .dtype_bytes import FP32

ZERO_STAGES = (0, 1, 2, 3)


def per_process(est: dict, processes: int, zero: int) -> dict:
    """The estimate `est` (cpu_estimate.estimate's or gpu_estimate's "parts") for one of `processes` processes
    under ZeRO stage `zero` (0: DDP, or one plain process); the parts changed, "sharding" added and the sums
    redone."""
    if zero not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage {zero}: choose one of {ZERO_STAGES}")
    n, out = processes, dict(est)
    if zero == 0:
        out["sharding"] = est["gradients"] if n > 1 else 0  # DDP's buckets
    else:
        trained = est["gradients"]  # the trained weights' bytes (gradients are in their dtype)
        out["optimizer"] = est["optimizer"] / n
        if zero >= 2:
            out["gradients"] = est["gradients"] / n
        master = FP32 * est["trainable_params"] / n
        out["sharding"] = master + (trained / n if zero == 3 else trained)
    for key in ("optimizer", "gradients", "sharding"):
        out[key] = int(round(out[key]))
    shift = sum(out[k] - est.get(k, 0) for k in ("optimizer", "gradients", "sharding"))
    out["training"] = est["training"] + shift
    out["tensors"] = est["tensors"] + shift
    if "total" in est and "loading" in est:
        out["total"] = max(out["training"], out["loading"])
    out["processes"], out["zero"] = n, zero
    return out
