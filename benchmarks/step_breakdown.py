"""Where the training time goes: one epoch of `llm-tuning train` profiled, operator by operator.

The throughput benchmark (train_throughput.py) reports MFU: counted model FLOPs per second over the fp32
matmul rate (1024^3, measured here too). This script explains that figure. It trains the same model on the same
records with the same settings, through the Python API that `llm-tuning train` calls, twice in one process:
once plain (tokens/s, MFU) and once under torch's profiler, started at the first training step and stopped after
the last. Operators are grouped (the output layer's products, the layers' products, the low-rank products,
attention, the loss's exponentials and sums, GeLU, LayerNorm, the optimizer, other operators) with their share
of the step time, and for the products the FLOPs they did and the rate they ran at. The time not inside any operator is Python,
autograd and the Trainer between operators. Two bounds close the table: the MFU if every product ran at the
1024^3 rate, and the MFU if everything but the products took no time.

    .venv/bin/python benchmarks/step_breakdown.py [--method lora] [--records 64] [--packing] [--no-grouping]

Figures are self times under the profiler, which slows the run somewhat (printed: profiled against plain
tokens/s); shares are what to read, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_throughput import ROOT, build_setup, matmul_flops_per_s, ours_settings  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "src"))

GROUPS = ("output layer products", "layer products", "low-rank products (<= 64 wide)", "attention (SDPA)",
          "loss: exponentials, sums, softmax", "GeLU", "LayerNorm", "optimizer (foreach)", "other operators")
LOSS_RANGE = "llm_tuning: fused output layer + loss"  # a profiler range around fastloss's function, set below
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_"}


def _matmul_dims(name, shapes):
    """(M, K, N, batches) of a matmul event from its input shapes, or None when they were not recorded."""
    a, b = (shapes[1], shapes[2]) if name in ("aten::addmm", "aten::addmm_", "aten::baddbmm") else (shapes[0], shapes[1])
    if len(a) == 2 and len(b) == 2:
        return a[0], a[1], b[1], 1
    if len(a) == 3 and len(b) == 3:
        return a[1], a[2], b[2], a[0]
    return None


def _in_loss(event):
    p = event.cpu_parent
    while p is not None:
        if p.name == LOSS_RANGE:
            return True
        p = p.cpu_parent
    return False


def _group(event, vocab):
    name = event.name
    in_loss = _in_loss(event)  # the output layer runs in vocabulary blocks as wide as the MLP (2048): not told by shape
    if name in MATMULS:
        dims = _matmul_dims(name, event.input_shapes)
        if dims is None:
            return "other operators", 0
        m, k, n, bt = dims
        flops = 2 * m * k * n * bt
        if in_loss or vocab in (m, k, n):
            return "output layer products", flops
        if min(m, k, n) <= 64 and bt == 1:
            return "low-rank products (<= 64 wide)", flops
        return "layer products", flops
    if "scaled_dot_product" in name:
        return "attention (SDPA)", 0
    if in_loss or "softmax" in name:
        return "loss: exponentials, sums, softmax", 0
    if "gelu" in name:
        return "GeLU", 0
    if "layer_norm" in name:
        return "LayerNorm", 0
    if name.startswith("aten::_foreach") or name.startswith("aten::_fused_adam"):
        return "optimizer (foreach)", 0
    return "other operators", 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--packing", action="store_true", help="train with --packing true (LoRA, BitFit, IA3, full)")
    ap.add_argument("--no-grouping", action="store_true", help="--group-by-length false (random batches)")
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from llm_tuning.config import TrainConfig
    from llm_tuning.models import skip_bitsandbytes
    from llm_tuning.train import train

    skip_bitsandbytes()  # as the command does when not quantising

    import torch

    from llm_tuning.train import fastloss

    fused = fastloss.linear_cross_entropy_sum

    def labelled(*args):  # the loss's operators, told apart from the layers' in the profile
        with torch.profiler.record_function(LOSS_RANGE):
            return fused(*args)

    fastloss.linear_cross_entropy_sum = labelled

    class Window(TrainerCallback):
        """Wall time of the training steps; runs the profiler over them when given one."""

        def __init__(self, prof=None):
            self.prof, self.seconds = prof, None

        def on_train_begin(self, *a, **kw):
            if self.prof is not None:
                self.prof.__enter__()
            self.t = time.perf_counter()

        def on_train_end(self, *a, **kw):
            self.seconds = time.perf_counter() - self.t
            if self.prof is not None:
                self.prof.__exit__(None, None, None)

    with tempfile.TemporaryDirectory() as tmp:
        setup = build_setup(tmp, args.records)
        vocab = len(setup["tokenizer"])
        kind = "full" if args.method == "full" else "frozen"

        def run(prof=None):
            out = os.path.join(tmp, f"run-{time.time_ns()}")
            extra = {"prefix_projection": True} if args.method == "prefix" else {}  # as train_throughput.py runs it
            extra.update({"packing": True} if args.packing else {})
            extra.update({"group_by_length": False} if args.no_grouping else {})
            cfg = TrainConfig(model=setup["model_dir"], data=setup["data"], method=args.method, output_dir=out,
                              overwrite=True, **ours_settings(extra))
            window = Window(prof)
            rate = matmul_flops_per_s(1.5)
            train(cfg, callbacks=[window])
            rate = (rate + matmul_flops_per_s(1.5)) / 2
            with open(os.path.join(out, "metrics.json")) as f:
                tokens = json.load(f)["train_tokens"]
            return tokens, window.seconds, rate

        tokens, plain_s, rate = run()
        prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        _, prof_s, prof_rate = run(prof)

        seconds, flops, others = collections.Counter(), collections.Counter(), collections.Counter()
        for e in prof.events():
            if not e.name.startswith("aten::"):
                continue  # record_function ranges (Trainer, optimizer wrappers): their time is in their operators
            g, f = _group(e, vocab)
            seconds[g] += e.self_cpu_time_total / 1e6
            flops[g] += f
            if g == "other operators":
                others[e.name] += e.self_cpu_time_total / 1e6
        between = prof_s - sum(seconds.values())
        counted = tokens * setup["flops_token"][kind]

    _report(args, tokens, counted, rate, prof_rate, plain_s, prof_s, seconds, flops, others, between)


def _report(args, tokens, counted, rate, prof_rate, plain_s, prof_s, seconds, flops, others, between):
    """The breakdown as a markdown table, with the two MFU bounds under it."""
    how = (" packed" if args.packing else "") + (", random batches" if args.no_grouping else "")
    print(f"{args.method}{how}, {args.records} Chinese records, {tokens:,} real tokens; model FLOPs counted as in "
          f"train_throughput.py: {counted / 1e12:.3f} TFLOP; fp32 1024^3 matmul rate {rate / 1e9:.0f} GFLOP/s "
          f"(profiled run: {prof_rate / 1e9:.0f}); {os.cpu_count()} cores")
    print(f"plain run: {plain_s:.2f} s of training steps, {tokens / plain_s:.0f} tokens/s, MFU {counted / plain_s / rate:.3f}; "
          f"under the profiler: {prof_s:.2f} s, MFU {counted / prof_s / prof_rate:.3f}\n")
    print("| part of the training steps (profiled) | seconds | share | GFLOP done | GFLOP/s | of the 1024^3 rate |")
    print("|---|---|---|---|---|---|")
    for g in GROUPS + ("between operators (Python, autograd, Trainer)",):
        s = seconds.get(g, between if g.startswith("between") else 0.0)
        f = flops.get(g, 0)
        rated = f"{f / 1e9:.0f} | {f / s / 1e9:.0f} | {f / s / prof_rate:.2f}" if f and s else " | | "
        print(f"| {g} | {s:.3f} | {s / prof_s:.1%} | {rated} |")
    print("\nother operators, largest: " + ", ".join(f"{n[6:]} {s:.3f} s" for n, s in others.most_common(8)))
    mm_s = sum(seconds[g] for g in GROUPS[:3])
    mm_f = sum(flops[g] for g in GROUPS[:3])
    print(f"\nproducts: {mm_f / 1e12:.3f} TFLOP done in {mm_s:.2f} s ({mm_f / mm_s / prof_rate:.2f} of the rate); "
          f"counted {counted / 1e12:.3f} TFLOP")
    print(f"MFU bound if every product ran at the 1024^3 rate (the rest as measured): "
          f"{counted / (prof_s - mm_s + mm_f / prof_rate) / prof_rate:.3f}")
    print(f"MFU bound if everything but the products took no time: {counted / mm_s / prof_rate:.3f}")


if __name__ == "__main__":
    main()
