"""The estimate of a training run or of the `estimate` command's config: on the CPU (cpu_estimate.py) or on a
CUDA device (gpu_estimate.py)."""

from __future__ import annotations

from .cpu_estimate import estimate
from .gpu_estimate import estimate_gpu, on_gpu
from .sharding import per_process


def estimate_run(run, config=None, cuda: bool = False) -> dict:
    """The estimate for a training run (a TrainConfig: every option of `train` that changes memory), for the CPU
    or, cuda, the GPU. config: run.model's config already read (load_config), or None to read it.
    Bloom's attention is walked as the run has it: the project's SDPA unless --speedups is off."""
    args = (run.model if config is None else config, run.method, run.precision, run.quantization, run.batch_size,
            run.max_length, run.gradient_checkpointing, run)
    if cuda:
        return estimate_gpu(*args, kernels=run.kernels, speedups=run.speedups)
    return estimate(*args, bloom_sdpa=run.speedups)


def estimate_config(cfg, config=None) -> dict:
    """The estimate for an EstimateConfig (config/), on its --device, per process with --processes / --zero
    (sharding.py); config as for estimate_run."""
    cuda = getattr(cfg, "device", "cpu") == "cuda"
    est = estimate_run(cfg.train_config(), config, cuda)
    processes, zero = getattr(cfg, "processes", 1), getattr(cfg, "zero", 0)
    if processes == 1 and zero == 0:
        return est
    if cuda:
        return {**on_gpu(per_process(est["parts"], processes, zero), est["note"]), "processes": processes,
                "zero": zero}
    return per_process(est, processes, zero)
