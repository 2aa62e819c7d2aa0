"""llm-tuning against the seed's recipe on a CUDA GPU, at the seed's model shapes, in one device call.

The project's own version of ../shared/gpu/probe.py (same builds, records and recipe), with --packing and
--kernels on and off, tokens/s, MFU and peak GPU memory (NVML, CUDA context included) against
`estimate --device cuda`. Run on the GPU machine from the project root after `bash ../shared/gpu/prepare.sh`
with EXTRA_WHEELS=liger-kernel==0.8.5 (device call: command
`PROBE=benchmarks/gpu_throughput.py bash .gpu/run.sh [--only NAME,NAME] [--deadline 380]`, carry [".gpu"],
timeout_s 560; docs/gpu.md, "Benchmarks", has the planned calls).
Writes $OUT/results.jsonl (one line per run) and $OUT/runs.log; prints a markdown table at the end.
Each run is its own process with its own timeout; after --deadline seconds no new run starts. A name in --only
that is no run stops the benchmark at once, with the list of runs (check_only).
`--smoke` runs every llm-tuning command of the benchmark on this CPU instead (tiny models of both families, 8
records, 2 steps, the recipe left out: it is CUDA-only), so that a flag the train command refuses is found here
and not in the device's 15 minutes: `.venv/bin/python benchmarks/gpu_throughput.py --smoke` (11 minutes here,
all 16 commands exit 0; the packed runs take Liger under Triton's interpreter, see smoke_liger). The five
`bloom-mem-*` runs (MEMORY_RUNS: where the memory estimate misses; they run only when --only names them) were
added after that: `--smoke --only bloom-mem-lora,bloom-mem-prompt,bloom-mem-prompt-16,bloom-mem-prefix-proj,
bloom-mem-lora-8bit` (all exit 0, every row 4 x 512 tokens).

MFU: the model's 4 FLOPs per parameter per token (forward, input gradients; recomputation not counted, as PaLM
defines MFU) over the bf16 matrix rate the env run measures on the GPU at hand (8192^3 matmuls; MATMUL_RATE, the
H200's 790 TFLOP/s of ../shared/gpu/README.md, only if that fails: an H100 is lent too); HFU adds the
recomputed forward of the checkpointed layers (2 per parameter and token for each: 6 with every layer
checkpointed, 5 with --checkpoint-every 2). The issue's "~14 % of the matrix rate" counted 6 with checkpointing
(../shared/gpu/README.md): the HFU column of a fully checkpointed run is that figure. Not yet run: the
figures in benchmarks/README.md come from a device call, none was available when this was written.
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".gpu", "data")
RECIPE = os.path.join(ROOT, ".gpu", "recipe.py")
W = os.path.join(tempfile.gettempdir(), "gpu-throughput")
OUT = os.environ.get("OUT", W + "-out")
PY, T0 = sys.executable, time.time()
NAMES = None  # a list while check_only walks the runs
FAMILIES = {}  # "bloom" / "llama" -> the names of its runs (check_only)
ZH = os.path.join(DATA, "alpaca_gpt4_zh", "alpaca_zh_train.json")
TOK = os.path.join(DATA, "tokenizers", "llama2")
MATMUL_RATE = 790e12
PARAMS = {"bloom": 1.30e9, "llama": 6.74e9}  # Bloom-1b4-zh and Llama-2-7B at the shapes built below
try:
    import pynvml
    pynvml.nvmlInit(); H = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:  # a dry run without a GPU
    pynvml = None


def used_mib():
    return pynvml.nvmlDeviceGetMemoryInfo(H).used / 2**20 if pynvml else 0.0


def record(d):
    d["t"] = round(time.time() - T0, 1)
    print(json.dumps(d), flush=True)
    with open(os.path.join(OUT, "results.jsonl"), "a") as f:
        f.write(json.dumps(d) + "\n")


def _polled(cmd, timeout, env):
    """(rc, output, peak NVML MiB above the baseline) of one process."""
    base = used_mib(); peak = [base]; stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], used_mib()); time.sleep(0.05)
    th = threading.Thread(target=poll, daemon=True); th.start()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    stop.set(); th.join()
    return rc, out, round(peak[0] - base)


def run(name, cmd, timeout, outdir=None, env=None, extra=None):
    if NAMES is not None:  # check_only's walk: nothing runs
        NAMES.append(name); return None
    if ARGS.smoke and cmd[1] == RECIPE:
        return None  # the recipe is CUDA-only
    always = name.startswith(("build", "env"))  # the models a selected run needs, and the versions line
    if time.time() - T0 > ARGS.deadline or (ARGS.only and name not in ARGS.only and not always):
        return None
    t = time.time()
    rc, out, peak = _polled(cmd, timeout, env)
    with open(os.path.join(OUT, "runs.log"), "a") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)}\n{out[-6000:]}")
    d = {"name": name, "rc": rc, "wall_s": round(time.time() - t, 1), "peak_gpu_mib": peak, **(extra or {})}
    if rc != 0:
        d["tail"] = [l for l in out.strip().splitlines() if l.strip()][-3:]
    m = os.path.join(outdir, "metrics.json") if outdir else None
    if m and os.path.exists(m):
        r = json.load(open(m))
        d.update(tokens=r.get("train_tokens"), train_s=r.get("train_seconds"), train_loss=r.get("train_loss"),
                 reserved_mib=r.get("peak_gpu_reserved_mib"), allocated_mib=r.get("peak_gpu_allocated_mib"),
                 load_reserved_mib=r.get("load_peak_gpu_reserved_mib"),
                 load_allocated_mib=r.get("load_peak_gpu_allocated_mib"))
        if r.get("train_seconds"):
            d["tok_s"] = round(r["train_tokens"] / r["train_seconds"], 1)
    for line in out.splitlines():  # the recipe's own JSON line, the env run's matrix rate
        if line.startswith('{"recipe"'):
            r = json.loads(line); d.update(tokens=r["real_tokens"], train_s=r["train_s"], tok_s=r["tokens_per_s"])
        if line.startswith('{"matmul_rate"'):
            d.update(json.loads(line))
    record(d)
    return d


def build(kind, path):
    """Random weights at the real shapes, built on the GPU and saved once (probe.py's builds)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return
    code = SMOKE_BUILD.format(kind=kind, path=path, tok=TOK) if ARGS.smoke else f"""
import torch
from transformers import AutoTokenizer
torch.manual_seed(0)
if {kind!r} == 'bloom':
    from transformers import BloomConfig as C, BloomForCausalLM as M
    cfg, dt = C(hidden_size=2048, n_layer=24, n_head=16, vocab_size=46145, bos_token_id=1, eos_token_id=2, pad_token_id=0), torch.bfloat16
else:
    from transformers import LlamaConfig as C, LlamaForCausalLM as M
    cfg, dt = C(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2), torch.float16
with torch.device('cuda'):
    m = M(cfg).to(dt)
for p in m.parameters():
    p.data.normal_(0, 0.02)
m.save_pretrained({path!r}, max_shard_size='4GB')
AutoTokenizer.from_pretrained({TOK!r}).save_pretrained({path!r})
"""
    run(f"build-{kind}", [PY, "-c", code], 240)


SMOKE_BUILD = """
import torch
from transformers import AutoTokenizer
torch.manual_seed(0)
if {kind!r} == 'bloom':
    from transformers import BloomConfig as C, BloomForCausalLM as M
    cfg = C(hidden_size=64, n_layer=2, n_head=4, vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=0)
else:
    from transformers import LlamaConfig as C, LlamaForCausalLM as M
    cfg = C(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
            vocab_size=32000, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
M(cfg).save_pretrained({path!r})
AutoTokenizer.from_pretrained({tok!r}).save_pretrained({path!r})
"""


def subset(n):
    if NAMES is not None:
        return ""
    path = os.path.join(W, f"zh{n}.json")
    n = 8 if ARGS.smoke else n
    json.dump(json.load(open(ZH))[:n], open(path, "w"), ensure_ascii=False)
    return path


def estimate_mib(model, flags) -> dict:
    """`llm-tuning estimate --device cuda` for the run's memory flags: {"estimate_mib": the total (NVML's analogue),
    "estimate_tensors_mib": the tensors (max_memory_allocated's)}, {} if it fails."""
    if NAMES is not None:
        return {}
    keep = {"--method", "--precision", "--quantization", "--batch-size", "--max-length", "--gradient-checkpointing",
            "--checkpoint-every", "--kernels", "--speedups", "--num-virtual-tokens", "--prefix-projection",
            "--encoder"}
    args = [a for k, v in zip(flags[::2], flags[1::2]) if k in keep for a in (k, v)]
    p = subprocess.run([PY, "-m", "llm_tuning", "estimate", "--model", model, "--device", "cuda", "--json", "true"]
                       + args, capture_output=True, text=True)
    if p.returncode != 0:
        return {}
    e = json.loads(p.stdout)
    return {"estimate_mib": round(e["total"] / 2**20), "estimate_tensors_mib": round(e["tensors"] / 2**20)}


def smoke_liger(flags):
    """On the CPU --kernels auto takes the fused loss: for the packed runs (the full GPU path: packing,
    checkpointing, 8-bit, 4-bit) the smoke asks for Liger under Triton's interpreter instead, so that Liger meets
    each combination it meets on the GPU; the interpreter is slow, so the unpacked runs keep auto."""
    opts = dict(zip(flags[::2], flags[1::2]))
    if opts.get("--kernels", "auto") != "auto" or opts.get("--packing") != "true":
        return flags, None
    opts["--kernels"] = "liger"
    return [a for kv in opts.items() for a in kv], {"TRITON_INTERPRET": "1"}


def ours(name, model, data, flags, kind, recomputed, timeout=150):
    """recomputed: the share of the layers checkpointing runs twice (0 without it, 1/N with --checkpoint-every N)."""
    out = os.path.join(W, name)
    env = None
    if ARGS.smoke:
        flags, env = smoke_liger(flags)
        flags, timeout = flags + ["--max-steps", "2"], 600  # the interpreter is slow
    cmd = [PY, "-m", "llm_tuning", "train", "--model", model, "--data", data, "--output-dir", out, "--overwrite",
           "true", "--save-steps", "100000"] + flags
    d = run(name, cmd, timeout, out, env=env, extra=estimate_mib(model, flags))
    if d and d.get("tok_s") and not ARGS.smoke:  # MFU at the real sizes only
        d["mfu"] = round(d["tok_s"] * 4 * PARAMS[kind] / MATMUL_RATE, 3)
        d["hfu"] = round(d["tok_s"] * (4 + 2 * recomputed) * PARAMS[kind] / MATMUL_RATE, 3)
        record({"name": name + ":mfu", "mfu": d["mfu"], "hfu": d["hfu"]})
    return d


def bloom_runs(B):
    z320 = subset(320)
    run("recipe-bloom", [PY, RECIPE, B, z320, "bf16"], 150)
    recipe = ["--method", "lora", "--lora-alpha", "8", "--lora-dropout", "0", "--precision", "bf16", "--batch-size",
              "1", "--grad-accum", "8", "--max-length", "256", "--epochs", "1"]
    ours("bloom-recipe-settings", B, z320, recipe, "bloom", 0)
    # ours: the same records in batches of 8 (one step = the recipe's 8 examples), packed, kernels on/off
    mine = ["--method", "lora", "--lora-alpha", "8", "--lora-dropout", "0", "--precision", "bf16", "--batch-size",
            "8", "--max-length", "256", "--epochs", "1"]
    for pk in ("false", "true"):
        for kn in ("auto", "none"):
            ours(f"bloom-bs8-packing-{pk}-kernels-{kn}", B, z320, mine + ["--packing", pk, "--kernels", kn], "bloom", 0)
    # transformers' eager Bloom attention in place of the project's SDPA one: does that CPU speed-up win on CUDA?
    ours("bloom-bs8-speedups-false", B, z320, mine + ["--speedups", "false"], "bloom", 0)


def long_subset(n, joined=4):
    """n records, each one instruction with the outputs of `joined` records after it: every row fills 512 tokens,
    as the estimate assumes (the plain records are shorter and length-grouped)."""
    if NAMES is not None:
        return ""
    path = os.path.join(W, f"zh{n}-long.json")
    recs = json.load(open(ZH))[:n * joined]
    json.dump([{"instruction": recs[i]["instruction"], "input": "",
                "output": "\n".join(r["output"] for r in recs[i:i + joined])} for i in range(0, len(recs), joined)],
              open(path, "w"), ensure_ascii=False)
    return path


MEMORY_RUNS = {  # Bloom-1b4 at the H200's measured shape, where the estimate misses (docs/gpu.md, "GPU memory")
    "bloom-mem-lora": ["--method", "lora"],  # within the goal: the control
    "bloom-mem-prompt": ["--method", "prompt"],  # 10 virtual tokens: key length 522, not a multiple of 8
    "bloom-mem-prompt-16": ["--method", "prompt", "--num-virtual-tokens", "16"],  # 528: if the miss is the mask copy
    "bloom-mem-prefix-proj": ["--method", "prefix", "--prefix-projection", "true"],
    "bloom-mem-lora-8bit": ["--method", "lora", "--quantization", "8bit"],
}


def bloom_memory_runs(B):
    """Only when named in --only (or --smoke): peak allocated, reserved and NVML against the estimate's tensors
    and total, bf16, batch 4 x 512 full rows, no checkpointing, 12 steps, the methods' defaults."""
    if NAMES is None and not (ARGS.smoke or ARGS.only & set(MEMORY_RUNS)):
        return
    data = long_subset(48)
    for name, flags in MEMORY_RUNS.items():
        ours(name, B, data, flags + ["--precision", "bf16", "--batch-size", "4", "--max-length", "512",
                                     "--max-steps", "12", "--epochs", "1"], "bloom", 0)


def llama_runs(L):
    z64 = subset(64)
    run("recipe-llama-fp16-gc", [PY, RECIPE, L, z64, "fp16"], 150, env=dict(DTYPE="float16", GC="1", BS="4", GA="1",
                                                                           MAXLEN="512"))
    common = ["--method", "lora", "--lora-dropout", "0", "--gradient-checkpointing", "true", "--batch-size", "4",
              "--max-length", "512", "--epochs", "1"]
    for prec, quant in (("fp16", None), ("bf16", None), ("fp16", "8bit"), ("bf16", "4bit")):
        q = ["--quantization", quant] if quant else []
        for pk, kn in (("false", "none"), ("false", "auto"), ("true", "auto")):
            if quant and (pk, kn) != ("true", "auto"):
                continue  # quantised bases: the full GPU path only (time)
            ours(f"llama-{quant or prec}-gc-packing-{pk}-kernels-{kn}", L, z64, common + ["--precision", prec,
                 "--packing", pk, "--kernels", kn] + q, "llama", 1)
    # partial checkpointing (--checkpoint-every N: one layer in N recomputed), the fastest path otherwise
    for n in (2, 4):
        ours(f"llama-fp16-gc{n}-packing-true-kernels-auto", L, z64, common + [
            "--checkpoint-every", str(n), "--precision", "fp16", "--packing", "true", "--kernels", "auto"], "llama",
            -(-32 // n) / 32)


ENV = """
import json, time, torch, transformers, peft, bitsandbytes as b
print(torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__, b.__version__,
      torch.cuda.get_device_name())
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); c = torch.empty_like(a)
for i in range(40):  # 10 to warm up, 30 timed
    if i == 10:
        torch.cuda.synchronize(); t = time.perf_counter()
    torch.mm(a, a, out=c)
torch.cuda.synchronize()
print(json.dumps({"matmul_rate": round(30 * 2 * 8192**3 / (time.perf_counter() - t))}))
import liger_kernel; print('liger ok')  # last: without it the rate above still counts
"""


def wanted(family):
    """Whether a run of this family is selected: a model is built, saved and its records cut only then (a
    Llama-2-7B build writes 13 GB, time a device call cannot spare)."""
    return not ARGS.only or bool(ARGS.only & FAMILIES[family])


def table():
    rows = [json.loads(l) for l in open(os.path.join(OUT, "results.jsonl"))]
    tok = {r["name"]: r.get("tok_s") for r in rows}
    fu = {r["name"][:-len(":mfu")]: r for r in rows if r["name"].endswith(":mfu")}  # recorded after their run's row
    print("\n| run | tokens/s | x recipe | MFU | HFU | peak GPU MiB (NVML) | estimate MiB | allocated / reserved MiB "
          "| estimated tensors MiB |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["name"].startswith(("build", "env")) or r["name"].endswith(":mfu"):
            continue
        base = tok.get("recipe-bloom" if "bloom" in r["name"] else "recipe-llama-fp16-gc")
        ratio = f"{r['tok_s'] / base:.2f}" if r.get("tok_s") and base else ""
        u = fu.get(r["name"], {})
        print(f"| {r['name']} | {r.get('tok_s', '')} | {ratio} | {u.get('mfu', '')} | {u.get('hfu', '')} | "
              f"{r['peak_gpu_mib']} | {r.get('estimate_mib', '')} | "
              f"{r.get('allocated_mib') or ''} / {r.get('reserved_mib') or ''} | {r.get('estimate_tensors_mib', '')} |")


def check_only():
    """Every name --only asks for is a run: the benchmark is walked with nothing run to list them (a misspelt name
    would otherwise run nothing, and cost a device call)."""
    global NAMES
    for family, walk in (("bloom", lambda: (bloom_runs(""), bloom_memory_runs(""))), ("llama", lambda: llama_runs(""))):
        NAMES = []
        walk()
        FAMILIES[family] = set(NAMES)
    NAMES = None
    known = set().union(*FAMILIES.values())
    unknown = sorted(ARGS.only - known)
    if unknown:
        sys.exit(f"--only: no run named {', '.join(unknown)}; the runs are: {', '.join(sorted(known))}")


def main():
    global W, OUT, ZH, TOK, MATMUL_RATE
    check_only()
    if ARGS.smoke:  # this CPU, the shared data, its own folders
        shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
        W, OUT = W + "-smoke", os.environ.get("OUT", W + "-smoke-out")
        ZH, TOK = (os.path.join(shared, "alpaca_gpt4_zh", "alpaca_zh_train.json"),
                   os.path.join(shared, "tokenizers", "llama2"))
        for f in ("results.jsonl", "runs.log"):
            if os.path.exists(os.path.join(OUT, f)):
                os.remove(os.path.join(OUT, f))
    os.makedirs(W, exist_ok=True); os.makedirs(OUT, exist_ok=True)
    if not ARGS.smoke:
        env = run("env", [PY, "-c", ENV], 90)
        if env and env.get("matmul_rate"):  # MFU against this GPU's rate, not the H200's
            MATMUL_RATE = env["matmul_rate"]
    if wanted("bloom"):
        B = os.path.join(W, "bloom1b4"); build("bloom", B); bloom_runs(B); bloom_memory_runs(B)
    if wanted("llama"):
        L = os.path.join(W, "llama7b"); build("llama", L); llama_runs(L)
    table()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated run names (only the models they use are built)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds; 380 on the GPU (a run may take 150 more), none with --smoke")
    ap.add_argument("--smoke", action="store_true", help="every llm-tuning command on this CPU, tiny models, 2 steps")
    ARGS = ap.parse_args(); ARGS.only = set(filter(None, ARGS.only.split(",")))
    if ARGS.deadline is None:
        ARGS.deadline = float("inf") if ARGS.smoke else 380
    main()
