"""Training throughput: the seed's recipe against `llm-tuning train`, side by side in one run.

The seed's recipe is re-implemented here faithfully: transformers Trainer + PEFT LoRA (r=8, alpha=8, dropout 0,
Bloom `query_key_value` / Llama `q_proj,v_proj`), prompt "Human: " + instruction + "\\n" + input (stripped)
+ "\\n\\nAssistant: ", labels -100 on the prompt, eos id appended, MAX_LENGTH 256,
DataCollatorForSeq2Seq(padding=True), batch 1 x gradient accumulation 8, one epoch, the Trainer's default
learning rate, fp32. `llm-tuning train` (the command, in its own process) runs with the same LoRA config and
records and its own defaults.
Every run is a fresh process (peak RSS: its own VmHWM); recipe and ours alternate, repeated, medians reported;
the ratio is the median of the per-pair ratios.

Throughput model: a random Bloom (hidden 512, 6 layers, Chinese-LLaMA-2 tokenizer, 55,296 tokens, ~47M
parameters) on 64 Chinese records. MFU = model FLOPs per second / fp32 matmul FLOPs per second (1024^3,
measured by each run just before and after its training: this machine's speed drifts), with model FLOPs per real token = 4*N for frozen-base methods (forward + input gradients; 6*N for
full) plus attention (QK^T and AV: 4*layers*hidden*context forward, doubled with input gradients).
Learning: stories260K on the 900 English records, one epoch each, held-out loss on 90 of them.

    .venv/bin/python benchmarks/train_throughput.py [--reps 5] [--skip-learning] [--skip-methods]
    .venv/bin/python benchmarks/train_throughput.py --packing [--reps 3]   # --packing false/true pairs only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
ZH = os.path.join(SHARED, "alpaca_gpt4_zh", "alpaca_zh_train.json")
EN = os.path.join(SHARED, "alpaca_gpt4_en", "alpaca_en_train.json")
ZH_TOK = os.path.join(SHARED, "tokenizers", "chinese-llama2")
STORIES = os.path.join(SHARED, "models", "stories260K-hf")


# ------------------------------------------------------------------ workers (each runs in its own process)

def recipe_worker(model_dir, data_path, out_json, max_steps=-1, log_path=None):
    """The seed's recipe, as the seed's notebooks write it. With max_steps (real_size.py), it stops there and
    logs every step's tokens and seconds to log_path (the Trainer's own token count, a sum of the mask)."""
    import torch  # noqa: F401
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from llm_tuning.memory.process import seconds_since_process_start

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    def process_func(example):
        MAX_LENGTH = 256
        instruction = tokenizer("\n".join(["Human: " + example["instruction"], example["input"]]).strip() + "\n\nAssistant: ")
        response = tokenizer(example["output"], add_special_tokens=False)
        input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.eos_token_id]
        attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": input_ids[:MAX_LENGTH], "attention_mask": attention_mask[:MAX_LENGTH],
                "labels": labels[:MAX_LENGTH]}

    with open(data_path) as f:
        ds = Dataset.from_list(json.load(f))
    tokenized = ds.map(process_func, remove_columns=ds.column_names)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    targets = ["query_key_value"] if model.config.model_type == "bloom" else ["q_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=targets))
    first = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            first.setdefault("t", seconds_since_process_start())

        def on_log(self, args, state, control, logs=None, **kw):
            if log_path and logs and "loss" in logs:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs, "time_s": seconds_since_process_start()}) + "\n")

    args = TrainingArguments(output_dir=os.path.join(os.path.dirname(out_json), "recipe-out"),
                             per_device_train_batch_size=1, gradient_accumulation_steps=8, num_train_epochs=1,
                             logging_steps=1 if max_steps > 0 else 10, save_strategy="no", report_to="none",
                             use_cpu=True, **(dict(max_steps=max_steps, include_num_input_tokens_seen="non_padding")
                                              if max_steps > 0 else {}))
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, callbacks=[Clock()],
                      data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True))
    out = trainer.train()
    real = sum(len(x) for x in tokenized["input_ids"])  # batch 1: no padding at all
    return {"tokens": real, "seconds": out.metrics["train_runtime"], "startup": first.get("t"), "model": model,
            "tokenizer": tokenizer}


def ours_settings(extra: dict) -> dict:
    """`llm-tuning train`'s settings in these runs, as TrainConfig fields (the command gets them as flags):
    one epoch, the recipe's MAX_LENGTH, no checkpoint before the end, no tokenisation cache; for throughput the
    recipe's LoRA config (r=8, alpha=8, dropout 0), for learning ({"defaults": True}) the project's own."""
    extra = dict(extra)
    lora = {} if extra.pop("defaults", False) else dict(lora_r=8, lora_alpha=8, lora_dropout=0.0)
    return dict(epochs=1, max_length=256, save_steps=10**6, cache=False, prompt_text="Answer the instruction.",
                **lora, **extra)


def ours_worker(model_dir, data_path, out_json, method, extra, evaluate=False):
    """`llm-tuning train` as a user runs it: the command, in its own process."""
    out_dir = os.path.join(os.path.dirname(out_json), f"ours-{method}")
    cmd = [sys.executable, "-m", "llm_tuning", "train", "--model", model_dir, "--data", data_path, "--method", method,
           "--output-dir", out_dir, "--overwrite"]
    for k, v in ours_settings(extra).items():
        cmd += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"llm-tuning train failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        m = json.load(f)
    model = tok = None
    if evaluate:
        sys.path.insert(0, os.path.join(ROOT, "src"))
        from llm_tuning.infer import load_for_inference

        model, tok = load_for_inference(model_dir, out_dir)[:2]
    return {"tokens": m["train_tokens"], "seconds": m["train_seconds"], "startup": m["startup_seconds"],
            "model": model, "tokenizer": tok, "steps": m["steps"],
            "peak_rss_mib": m["peak_rss_mib"], "train_loss": m["train_loss"]}  # VmHWM: the command's own (train.py)


def _peak_rss_mib():
    """This process's own RSS high-water mark (VmHWM). Not ru_maxrss: Linux carries the spawning process's
    high-water mark over into a child's ru_maxrss (seen: 671 MiB reported by a child whose VmHWM was 9 MiB,
    spawned by this script's driver after it had built the model)."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from llm_tuning.memory.process import peak_rss_mib as peak

    return peak()


def worker(args):
    extra = json.loads(args.extra or "{}")
    # This machine's speed drifts (a shared VM): each run measures the matmul rate it gets just before and after
    # its own training, and its MFU is taken against that.
    t = time.perf_counter()
    rate_before = matmul_flops_per_s(1.5)
    rate_seconds = time.perf_counter() - t
    if args.kind == "recipe":
        r = recipe_worker(args.model_dir, args.data, args.out)
        # the recipe trains in this process: its start-up clock also ran through the rate measurement above
        r["startup"] -= rate_seconds
    else:  # `llm-tuning train` runs in a child process with its own clock
        r = ours_worker(args.model_dir, args.data, args.out, args.method, extra, evaluate=bool(args.heldout))
    # measured before any evaluation loads a second copy of the model
    result = {"tokens": r["tokens"], "seconds": r["seconds"], "startup": r["startup"],
              "peak_rss_mib": r.get("peak_rss_mib") or _peak_rss_mib(),
              "rate": (rate_before + matmul_flops_per_s(1.5)) / 2, "train_loss": r.get("train_loss")}
    if args.heldout:
        sys.path.insert(0, os.path.join(ROOT, "src"))
        from llm_tuning.evaluate import response_loss

        with open(args.heldout) as f:
            val = json.load(f)
        r["model"].eval()
        result["heldout_loss"] = response_loss(r["model"], r["tokenizer"], val, max_length=256)["loss"]
    with open(args.out, "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------------ driver

def matmul_flops_per_s(seconds=2.0, n=1024):
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t)


def run(kind, model_dir, data, tmp, method="lora", extra=None, heldout=None):
    out = os.path.join(tmp, f"{kind}-{method}-{time.time_ns()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--kind", kind, "--model-dir", model_dir, "--data",
           data, "--out", out, "--method", method, "--extra", json.dumps(extra or {})] + (["--heldout", heldout] if heldout else [])
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{kind} {method} failed:\n{p.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def build_setup(tmp, records=64):
    """The throughput model and data, written under tmp: a random Bloom (hidden 512, 6 layers, Chinese-LLaMA-2
    tokenizer, ~47M parameters) and the first `records` Chinese records; model FLOPs per real token counted."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from llm_tuning.models import load_tokenizer

    os.environ["LLM_TUNING_CACHE"] = os.path.join(tmp, "cache")
    tok = load_tokenizer(ZH_TOK)
    torch.manual_seed(0)
    layers, hidden = 6, 512
    model = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=hidden, n_layer=layers, n_head=8,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    n_params = sum(p.numel() for p in model.parameters())
    bloom = os.path.join(tmp, "bloom")
    model.save_pretrained(bloom)
    tok.save_pretrained(bloom)
    del model
    with open(ZH) as f:
        recs = json.load(f)[:records]
    data = os.path.join(tmp, "zh.json")
    with open(data, "w") as f:
        json.dump(recs, f, ensure_ascii=False)
    lengths = []
    for r in recs:  # the recipe's tokenisation, for the attention term of the FLOPs
        p = tok("\n".join(["Human: " + r["instruction"], r["input"]]).strip() + "\n\nAssistant: ")["input_ids"]
        lengths.append(min(256, len(p) + len(tok(r["output"], add_special_tokens=False)["input_ids"]) + 1))
    # attention per real token: mean context length = sum(T^2/2)/sum(T)
    ctx = sum(t * t / 2 for t in lengths) / sum(lengths)
    flops_token = {"frozen": 4 * n_params + 8 * layers * hidden * ctx, "full": 6 * n_params + 12 * layers * hidden * ctx}
    return {"model_dir": bloom, "data": data, "records": recs, "tokenizer": tok, "n_params": n_params,
            "lengths": lengths, "flops_token": flops_token}


def packing_pairs(bloom, data, tmp, reps, tps, extra):
    """llm-tuning LoRA on the throughput workload without and with --packing, alternating; the ratio is the
    median of the per-pair ratios. The training losses should agree (packing changes no example's loss)."""
    ratios = []
    for i in range(reps):
        r = {p: run("ours", bloom, data, tmp, extra={"packing": p, **extra}) for p in (False, True)}
        ratios.append(tps(r[True]) / tps(r[False]))
        print(f"  rep {i + 1}: padded {tps(r[False]):.0f} tokens/s (loss {r[False]['train_loss']:.6f}), packed "
              f"{tps(r[True]):.0f} tokens/s (loss {r[True]['train_loss']:.6f}), {r[True]['tokens']} = "
              f"{r[False]['tokens']} real tokens; ratio {ratios[-1]:.2f}", flush=True)
    print(f"\npacking / padded, median of {reps} pairs: {statistics.median(ratios):.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--skip-learning", action="store_true")
    ap.add_argument("--skip-methods", action="store_true")
    ap.add_argument("--packing", action="store_true", help="only: llm-tuning LoRA with --packing false / true, "
                                                           "alternating pairs, tokens/s and training loss")
    ap.add_argument("--no-grouping", action="store_true", help="with --packing: both sides --group-by-length false "
                                                               "(random batches, the padding packing removes)")
    for a in ("--worker",):
        ap.add_argument(a, action="store_true", help=argparse.SUPPRESS)
    for a in ("--kind", "--model-dir", "--data", "--out", "--method", "--extra", "--heldout"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        setup = build_setup(tmp, args.records)
        bloom, data, recs, tok = setup["model_dir"], setup["data"], setup["records"], setup["tokenizer"]
        n_params, flops_token, layers, hidden = setup["n_params"], setup["flops_token"], 6, 512
        lengths = setup["lengths"]
        rate = matmul_flops_per_s()
        print(f"model: random Bloom, {n_params / 1e6:.1f}M parameters (hidden {hidden}, {layers} layers, vocab {len(tok):,}); "
              f"{len(recs)} Chinese records ({sum(lengths):,} real tokens); fp32 matmul rate now {rate / 1e9:.1f} GFLOP/s "
              f"(each run measures its own); {os.cpu_count()} cores; {args.reps} alternating repetitions\n", flush=True)

        def tps(r):
            return r["tokens"] / r["seconds"]

        if args.packing:
            return packing_pairs(bloom, data, tmp, args.reps, tps, {"group_by_length": False} if args.no_grouping else {})

        def mfu(r, kind="frozen"):
            return tps(r) * flops_token[kind] / r["rate"]

        res = {"recipe": [], "ours": []}
        for i in range(args.reps):
            for kind in ("recipe", "ours"):
                res[kind].append(run(kind, bloom, data, tmp))
                r = res[kind][-1]
                print(f"  rep {i + 1} {kind}: {tps(r):.0f} tokens/s, MFU {mfu(r):.3f} (matmul {r['rate'] / 1e9:.0f} GFLOP/s), "
                      f"start-up {r['startup']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)

        def med(kind, f):
            return statistics.median(f(x) for x in res[kind])

        # ratio: median over the alternating pairs, so a slow spell of the machine hits both sides of a pair
        pairs = [tps(o) / tps(r) for r, o in zip(res["recipe"], res["ours"])]
        ratio = statistics.median(pairs)
        print("\nper pair: ratios " + ", ".join(f"{x:.2f}" for x in pairs) + "; our MFU "
              + ", ".join(f"{mfu(o):.3f}" for o in res["ours"]) + f" (median {med('ours', mfu):.3f})")
        print("\n| LoRA, same config and records (medians) | real tokens/s | MFU | peak RSS MiB | start-up to first step s | ratio to recipe |")
        print("|---|---|---|---|---|---|")
        for kind, label in (("recipe", "seed recipe (Trainer, batch 1 x accum 8)"), ("ours", "llm-tuning train (defaults)")):
            print(f"| {label} | {med(kind, tps):.0f} | {med(kind, mfu):.2f} | {med(kind, lambda x: x['peak_rss_mib']):.0f} | "
                  f"{med(kind, lambda x: x['startup']):.1f} | {1.0 if kind == 'recipe' else ratio:.2f}x |")
        base = med("recipe", tps)

        if not args.skip_methods:
            print("\n| llm-tuning train, other methods (1 run each) | real tokens/s | MFU | peak RSS MiB | ratio to recipe LoRA |")
            print("|---|---|---|---|---|")
            for method, extra in (("bitfit", {}), ("prompt", {}), ("ptuning", {}), ("prefix", {"prefix_projection": True}),
                                  ("ia3", {}), ("full", {})):
                r = run("ours", bloom, data, tmp, method, extra)
                print(f"| {method} | {tps(r):.0f} | {mfu(r, 'full' if method == 'full' else 'frozen'):.2f} | "
                      f"{r['peak_rss_mib']:.0f} | {tps(r) / base:.2f}x |", flush=True)

        if not args.skip_learning:
            with open(EN) as f:
                en = json.load(f)
            train_path, val_path = os.path.join(tmp, "en_train.json"), os.path.join(tmp, "en_val.json")
            with open(train_path, "w") as f:
                json.dump(en[:810], f)
            with open(val_path, "w") as f:
                json.dump(en[810:], f)
            print("\n| stories260K, one epoch over 810 English records | held-out loss (90 records) | real tokens/s |")
            print("|---|---|---|")
            for kind, label in (("recipe", "seed recipe"), ("ours", "llm-tuning train (defaults)")):
                r = run(kind, STORIES, train_path, tmp, extra={"defaults": True}, heldout=val_path)
                print(f"| {label} | {r['heldout_loss']:.4f} | {r['tokens'] / r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
