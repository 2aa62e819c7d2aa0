"""The estimate of a training run or of the `estimate` command's config: on the CPU (cpu_estimate.py) or on a
CUDA device (gpu_estimate.py)."""

from __future__ import annotations

from .cpu_estimate import estimate
from .gpu_estimate import estimate_gpu


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
    """The estimate for an EstimateConfig (config/), on its --device; config as for estimate_run."""
    return estimate_run(cfg.train_config(), config, getattr(cfg, "device", "cpu") == "cuda")
