"""The seed's real model sizes: Bloom-1b4-zh and Llama-2-7B shapes, every run measured against `llm-tuning estimate`.

Models: random weights with the exact shapes (Bloom-1b4-zh: hidden 2048, 24 layers, 16 heads, vocabulary 46,145,
stored fp32 like the hub's; Llama-2-7B: hidden 4096, 32 layers, intermediate 11,008, vocabulary 32,000, stored
fp16 like the hub's). They are built on the meta device and written one tensor at a time into 2 GB safetensors
shards, so no full copy is ever held (Llama-2-7B in fp32 would be 27 GB). Tokenizer: the real Llama-2 one (32,000
tokens, every id inside both vocabularies; Bloom's own 46,145-token tokenizer is not on this machine). Data: the
first 48 alpaca_gpt4_zh records.

Each configuration is `llm-tuning train` (or the seed's recipe, benchmarks/train_throughput.py's, for Bloom LoRA)
in its own process, started from this driver, which never imports torch: the peak RSS is the child's own whole
process high-water mark (wait4's ru_maxrss), what a user sees. Steady-state speed comes from log.jsonl (tokens
seen and seconds at each step) after the warm-up steps; MFU counts 4 FLOPs per parameter per real token for a
frozen base (6 for full fine-tuning; checkpointing's recomputation not counted) plus attention, against the
median fp32 1024^3 matmul rate measured (3 s, own process) before and after each run; bf16 runs against the same
fp32 rate (on an AVX2-only CPU bf16 products are many times slower, which their MFU then shows).

    .venv/bin/python benchmarks/real_size.py                 # everything: ~2 hours on 2 AVX2 cores (a bf16 step: ~5 min)
    .venv/bin/python benchmarks/real_size.py --only bloom-fp32-lora,bloom-fp32-recipe
    .venv/bin/python benchmarks/real_size.py --report        # the table again from the saved results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
ZH = os.path.join(SHARED, "alpaca_gpt4_zh", "alpaca_zh_train.json")
LLAMA_TOK = os.path.join(SHARED, "tokenizers", "llama2")
PY = sys.executable
GiB = 2**30

SHAPES = {
    "bloom": dict(model_type="bloom", hidden_size=2048, n_layer=24, n_head=16, vocab_size=46145, dtype="float32"),
    "llama": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, dtype="float16"),
}

BLOOM_FP32 = ["--batch-size", "4", "--max-length", "256"]
# bf16 on this AVX2-only CPU runs ~100x slower than fp32 (no bf16 units): one step of a short batch, for memory
BLOOM_BF16 = ["--precision", "bf16", "--batch-size", "1", "--max-length", "32"]
SHORT = ["--data", "zh48-short.json"]  # the 48 records with the shortest prompts, so that 32 tokens hold answers
RECIPE_EST = ["--method", "lora", "--batch-size", "1", "--max-length", "256"]  # the recipe's batch 1 x accum 8
LLAMA = ["--method", "lora", "--gradient-checkpointing", "true", "--batch-size", "1"]
METHODS = {  # name -> train flags
    "lora": ["--method", "lora"], "lora-gc": ["--method", "lora", "--gradient-checkpointing", "true"],
    "bitfit": ["--method", "bitfit"], "prompt": ["--method", "prompt"], "ptuning": ["--method", "ptuning"],
    "ptuning-lstm": ["--method", "ptuning", "--encoder", "lstm"], "prefix": ["--method", "prefix"],
    "prefix-proj": ["--method", "prefix", "--prefix-projection", "true"], "ia3": ["--method", "ia3"],
    "full": ["--method", "full"],
}
PARTIAL = {  # partial checkpointing, one layer in 2 / in 4 (--checkpoint-every): between lora-gc and lora (fp32 only)
    "lora-gc2": METHODS["lora-gc"] + ["--checkpoint-every", "2"],
    "lora-gc4": METHODS["lora-gc"] + ["--checkpoint-every", "4"],
}


TIMEOUT = {}  # name -> seconds, where a run is stopped early (its peak RSS so far is still measured)


def configs():
    """name -> (model, flags, warm-up steps, measured steps); 'recipe' runs the seed's recipe instead."""
    out = {"bloom-fp32-recipe": ("bloom", "recipe", 1, 2)}
    for m, flags in {**METHODS, **PARTIAL}.items():
        out[f"bloom-fp32-{m}"] = ("bloom", flags + BLOOM_FP32, 1, 2)
    for m, flags in METHODS.items():
        out[f"bloom-bf16-{m}"] = ("bloom", flags + BLOOM_BF16 + SHORT, 0, 1)
    out["llama-bf16-lora-gc"] = ("llama", LLAMA + ["--precision", "bf16", "--max-length", "32"] + SHORT, 0, 1)
    TIMEOUT["llama-bf16-lora-gc"] = 600  # its bf16 step would take ~30 min on an AVX2 CPU: the load is measured
    out["llama-8bit-lora-gc"] = ("llama", LLAMA + ["--quantization", "8bit", "--max-length", "64"], 1, 1)
    out["llama-4bit-lora-gc"] = ("llama", LLAMA + ["--quantization", "4bit", "--max-length", "64"], 1, 1)
    return out


# ------------------------------------------------------------------ building the models (a child process)

def build(kind: str, folder: str):
    """A random-weight model of the named shape, written tensor by tensor: never more than one tensor in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shape = dict(SHAPES[kind])
    tok = AutoTokenizer.from_pretrained(LLAMA_TOK)
    cfg = AutoConfig.for_model(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    dtype = getattr(torch, shape["dtype"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for name, p in model.state_dict().items():
        if name in tied:
            continue
        if name.endswith("bias"):
            t = torch.zeros(p.shape, dtype=dtype)
        elif p.dim() == 1:  # layer / RMS norm weights
            t = torch.ones(p.shape, dtype=dtype)
        else:
            t = torch.empty(p.shape, dtype=torch.float32).normal_(0, 0.02, generator=gen).to(dtype)
        shard[name] = t
        size += t.numel() * t.element_size()
        if size >= 2 * GiB:
            flush()
    flush()
    total = sum(p.numel() for p in model.parameters())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * dtype.itemsize}, "weight_map": index}, f, indent=1)
    cfg.dtype = dtype
    cfg.save_pretrained(folder)
    tok.save_pretrained(folder)
    print(f"built {kind}: {total:,} parameters, {n} shards in {folder}", flush=True)


def recipe(model_dir, data, out_dir, max_steps):
    """The seed's recipe (train_throughput.recipe_worker) for max_steps, logging tokens and seconds per step."""
    sys.path.insert(0, HERE)
    from train_throughput import recipe_worker

    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, "log.jsonl")):
        os.remove(os.path.join(out_dir, "log.jsonl"))
    recipe_worker(model_dir, data, os.path.join(out_dir, "x.json"), max_steps=max_steps,
                  log_path=os.path.join(out_dir, "log.jsonl"))


# ------------------------------------------------------------------ the driver (no torch in this process)

def child(args: list[str], log: str, timeout: float = 1800) -> tuple[int, float, float]:
    """Runs a command; (exit code, its own peak RSS in MiB, wall seconds); killed after `timeout` seconds (exit
    -9). wait4 gives the child's high-water mark (this process is small and never imports torch, so none of its
    own memory is inherited into the figure)."""
    import threading

    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t


def self_call(*args) -> list[str]:
    return [PY, os.path.abspath(__file__), *args]


def steady(log_path: str, warmup: int) -> dict:
    """Per-step seconds and the tokens/s of the steps after the warm-up, from a log.jsonl."""
    with open(log_path) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    if warmup == 0:  # one step only (bf16 on a CPU without bf16 units): its own figures, warm-up included
        with open(os.path.join(os.path.dirname(log_path), "metrics.json")) as f:
            m = json.load(f)
        return {"tokens_per_s": m["train_tokens"] / m["train_seconds"], "step_seconds": [round(m["train_seconds"], 1)],
                "tokens_per_step": m["train_tokens"], "first_step_at_s": rows[0]["time_s"], "first_step_only": True}
    times = [r["time_s"] for r in rows]
    tokens = [r["num_input_tokens_seen"] for r in rows]
    step_s = [round(b - a, 1) for a, b in zip(times, times[1:])]
    w = warmup - 1  # the log after the last warm-up step
    return {"tokens_per_s": (tokens[-1] - tokens[w]) / (times[-1] - times[w]), "step_seconds": step_s,
            "tokens_per_step": (tokens[-1] - tokens[w]) / (len(rows) - 1 - w), "first_step_at_s": times[0]}


def estimate(model_dir, flags) -> dict | None:
    keep = {"--method", "--precision", "--quantization", "--batch-size", "--max-length", "--gradient-checkpointing",
            "--checkpoint-every", "--prefix-projection", "--encoder"}
    est_flags = [x for i, x in enumerate(flags) if x in keep or (i and flags[i - 1] in keep)]
    p = subprocess.run([PY, "-m", "llm_tuning", "estimate", "--model", model_dir, *est_flags, "--json"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr.strip()[-300:]}


def flops_per_token(est: dict, shape: dict, flags, tokens_per_seq: float) -> float:
    """Model FLOPs per real token: 4N frozen (forward + input gradients), 6N full, plus attention's two products."""
    full = "full" in flags
    n = est["total_params"] - (0 if shape["model_type"] == "bloom" else shape["vocab_size"] * shape["hidden_size"])
    layers = shape.get("n_layer") or shape["num_hidden_layers"]
    attn = 4 * layers * shape["hidden_size"] * tokens_per_seq / 2  # mean context ~ half the sequence
    return (6 if full else 4) * n + (3 if full else 2) * attn


def run_one(name, spec, work, results):
    kind, flags, warmup, measured = spec
    model_dir = os.path.join(work, f"{kind}-real-shape")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        code, rss, secs = child(self_call("--build", kind, model_dir), os.path.join(work, f"build-{kind}.log"))
        if code:
            raise SystemExit(f"building {kind} failed: see {work}/build-{kind}.log")
        print(f"  built {kind} in {secs:.0f} s (peak RSS {rss:.0f} MiB)", flush=True)
    data = os.path.join(work, "zh48.json")
    if "--data" in flags:
        data = os.path.join(work, flags[flags.index("--data") + 1])
        flags = [x for i, x in enumerate(flags) if x != "--data" and flags[i - 1] != "--data"]
    out = os.path.join(work, "runs", name)
    steps = warmup + measured
    rates = [rate_now()]
    sequences = 8 if flags == "recipe" else int(flags[flags.index("--batch-size") + 1])  # per optimiser step
    if flags == "recipe":
        cmd, flags = self_call("--recipe", model_dir, data, out, str(steps)), ["--method", "lora", *BLOOM_FP32]
        est_flags = RECIPE_EST
    else:
        cmd = [PY, "-m", "llm_tuning", "train", "--model", model_dir, "--data", data, "--output-dir", out,
               "--overwrite", "--max-steps", str(steps), "--save-steps", "1000000", "--cache", "false", *flags]
        est_flags = flags
    est = estimate(model_dir, est_flags)
    if "error" not in est and est["training"] > 22.5 * GiB:  # a load's file pages the kernel can drop
        results[name] = {"skipped": f"training estimated {est['training'] / GiB:.1f} GiB: over this machine's 24 GiB",
                         "estimate": est}
        print(f"  {name}: not run, {results[name]['skipped']}", flush=True)
        return
    code, rss, secs = child(cmd, os.path.join(work, f"{name}.log"), TIMEOUT.get(name, 1800))
    if code == -9 and name in TIMEOUT:
        results[name] = {"stopped": f"stopped after {secs:.0f} s", "peak_rss_mib": rss,
                         "estimate": est, "model_dir": model_dir, "est_flags": est_flags}
        print(f"  {name}: stopped after {secs:.0f} s, peak RSS so far {rss / 1024:.2f} GiB, estimate "
              f"{est['total'] / GiB:.2f} GiB (loading {est['loading'] / GiB:.2f})", flush=True)
        return
    if code:
        results[name] = {"failed": f"exit {code}, see {work}/{name}.log"}
        print(f"  {name}: FAILED (exit {code}); log {work}/{name}.log", flush=True)
        return
    rates.append(rate_now())
    s = steady(os.path.join(out, "log.jsonl"), warmup)
    shape = SHAPES[kind]
    results[name] = {**s, "peak_rss_mib": rss, "wall_s": secs, "rates_gflops": [r / 1e9 for r in rates],
                     "model_flops_per_token": flops_per_token(est, shape, flags, s["tokens_per_step"] / sequences),
                     "estimate_gib": est["total"] / GiB, "model_dir": model_dir, "est_flags": est_flags}
    print(f"  {name}: {s['tokens_per_s']:.1f} tokens/s steady (steps {s['step_seconds']} s), fp32 matmul "
          f"{', '.join(f'{r / 1e9:.0f}' for r in rates)} GFLOP/s before/after, "
          f"peak RSS {rss / 1024:.2f} GiB vs estimate {est['total'] / GiB:.2f} GiB, wall {secs:.0f} s", flush=True)


def rate_now() -> float:
    return float(subprocess.run(self_call("--rate"), capture_output=True, text=True, cwd=ROOT).stdout.strip())


def report(results):
    """The table; each estimate is taken again (the estimator may have changed since the run)."""
    for r in results.values():
        if "est_flags" in r:
            r["estimate_gib"] = estimate(r["model_dir"], r["est_flags"])["total"] / GiB
    # MFU against the median of every rate measured around the runs: single 3 s measurements between runs
    # scattered 49-162 GFLOP/s while the runs' own tokens/s hardly moved
    rate = statistics.median(x for r in results.values() for x in r.get("rates_gflops", []))
    print(f"fp32 1024^3 matmul rate, median around the runs: {rate:.0f} GFLOP/s")
    base = results.get("bloom-fp32-recipe", {}).get("tokens_per_s")
    print("\n| configuration | steady tokens/s | MFU | vs recipe | peak RSS GiB | estimate GiB | estimate off by | step seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "tokens_per_s" not in r:
            peak = f"{r['peak_rss_mib'] / 1024:.2f}" if "peak_rss_mib" in r else ""
            print(f"| {name} | {r.get('skipped') or r.get('stopped') or r.get('failed')} | | | {peak} | "
                  f"{r['estimate']['total'] / GiB:.2f} | | |" if "estimate" in r else f"| {name} | {r.get('failed')} |")
            continue
        off = 100 * (r["estimate_gib"] * 1024 - r["peak_rss_mib"]) / r["peak_rss_mib"]
        mfu = r["tokens_per_s"] * r["model_flops_per_token"] / (rate * 1e9)
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base and name.startswith("bloom-fp32") else ""
        print(f"| {name} | {r['tokens_per_s']:.{1 if r['tokens_per_s'] >= 1 else 2}f} | {mfu:.{2 if mfu >= 0.1 else 3}f} | {ratio} | {r['peak_rss_mib'] / 1024:.2f} | "
              f"{r['estimate_gib']:.2f} | {off:+.0f} % | {', '.join(map(str, r['step_seconds']))} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/llm-tuning-real-size", help="models, runs and results.json go here")
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument("--report", action="store_true", help="print the table from the saved results only")
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--rate", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build:
        return build(*a.build)
    if a.rate:
        sys.path.insert(0, HERE)
        from train_throughput import matmul_flops_per_s

        return print(matmul_flops_per_s(3.0))
    if a.recipe:
        return recipe(*a.recipe[:3], int(a.recipe[3]))
    os.makedirs(a.work, exist_ok=True)
    path = os.path.join(a.work, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    if not a.report:
        with open(ZH) as f:
            recs = json.load(f)
        with open(os.path.join(a.work, "zh48.json"), "w") as f:
            json.dump(recs[:48], f, ensure_ascii=False)
        with open(os.path.join(a.work, "zh48-short.json"), "w") as f:
            json.dump(sorted(recs, key=lambda r: len(r["instruction"]) + len(r["input"]))[:48], f, ensure_ascii=False)
        todo = configs()
        names = a.only.split(",") if a.only else list(todo)
        for name in names:
            run_one(name, todo[name], a.work, results)
            with open(path, "w") as f:
                json.dump(results, f, indent=1)
    report(results)


if __name__ == "__main__":
    main()
