"""Peak GPU memory of a run, in metrics.json and the log (CUDA only; nothing on the CPU).

`torch.cuda.max_memory_reserved` is what the caching allocator took from the driver: the figure that decides
whether a run fits on a card (an out-of-memory error comes when a reservation fails), above the tensors'
own peak (`max_memory_allocated`) by the allocator's rounding and fragmentation. Neither counts the CUDA
context (~0.5 GiB of driver memory outside the allocator) that nvidia-smi / NVML show:
memory/gpu_estimate.py adds it to predict what NVML reports.
"""

from __future__ import annotations


def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def reset_peak_gpu():
    """Start the peaks afresh (before the model load, as for the CPU's peak RSS)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peaks(prefix: str = "peak") -> dict:
    """{"peak_gpu_reserved_mib", "peak_gpu_allocated_mib", "gpu"} on CUDA since reset_peak_gpu; {} elsewhere.
    prefix "load_peak": the same read once the model is loaded and the method applied, without "gpu" (what the
    whole run's peak owes to loading, the rest being training's)."""
    cuda = _cuda()
    if cuda is None:
        return {}
    out = {f"{prefix}_gpu_reserved_mib": round(cuda.max_memory_reserved() / 2**20, 1),
           f"{prefix}_gpu_allocated_mib": round(cuda.max_memory_allocated() / 2**20, 1)}
    return out if prefix != "peak" else {**out, "gpu": cuda.get_device_name()}


def describe(metrics: dict) -> str | None:
    """The log line for the peaks in `metrics`, None when there are none."""
    if "peak_gpu_reserved_mib" not in metrics:
        return None
    line = (f"peak GPU memory {metrics['peak_gpu_reserved_mib'] / 1024:.2f} GiB reserved by torch "
            f"({metrics['peak_gpu_allocated_mib'] / 1024:.2f} GiB in tensors) on {metrics['gpu']}")
    if "load_peak_gpu_reserved_mib" in metrics:
        line += (f"; while loading {metrics['load_peak_gpu_reserved_mib'] / 1024:.2f} GiB reserved "
                 f"({metrics['load_peak_gpu_allocated_mib'] / 1024:.2f} GiB in tensors)")
    return line
