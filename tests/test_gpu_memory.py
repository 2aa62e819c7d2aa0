"""Peak GPU memory in metrics.json and the log (memory/gpu_peaks.py): nothing on a CPU; on CUDA the whole run's
peak and, apart, the peak while loading (the figure that tells a loading transient from training's own)."""

import pytest
import torch

from llm_tuning.memory.gpu_peaks import describe, gpu_peaks


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side: no GPU figures")
def test_a_cpu_run_has_no_gpu_figures():
    assert gpu_peaks() == {} and gpu_peaks("load_peak") == {}
    assert describe({"peak_rss_mib": 100.0}) is None


def test_the_log_line_says_the_run_peak_and_the_loading_peak():
    run = {"peak_gpu_reserved_mib": 15360.0, "peak_gpu_allocated_mib": 14336.0, "gpu": "NVIDIA H200"}
    assert describe(run) == "peak GPU memory 15.00 GiB reserved by torch (14.00 GiB in tensors) on NVIDIA H200"
    loaded = {**run, "load_peak_gpu_reserved_mib": 7168.0, "load_peak_gpu_allocated_mib": 6656.0}
    assert describe(loaded).endswith("; while loading 7.00 GiB reserved (6.50 GiB in tensors)")
