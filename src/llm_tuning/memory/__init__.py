"""Memory: how much a training run needs, before it runs, and how much it took.

The estimate, from a model config alone (no weights read): dtype_bytes.py (bytes per element, stored dtype),
params.py (what each method trains), activations.py (one decoder layer walked for what autograd keeps),
cpu_estimate.py (the largest moment of a training step: peak process memory), gpu_estimate.py (the same on a CUDA
device), estimate.py (a run's or the `estimate` command's config in, the estimate out). Sizing by it: sizing.py
(`--batch-size auto`, `--checkpoint-every auto`) and loss_chunks.py (the fused loss's pieces). Measured:
process.py (peak RSS), gpu_peaks.py (peak GPU memory). allocator.py sets glibc's malloc in a training process
so that freed tensors go back to the system: the CPU peak is then what the estimate counts.

Below train/ and lab/, which use it; above config/, methods/ and models/, whose facts it reads. It prints nothing: the
command's table is cli/estimate.py.
"""
