"""Peak memory and training speed of LoRA by precision and quantisation, with and without gradient checkpointing.

One model size, side by side in one run. Each configuration runs in a fresh process, so its peak RSS
(or peak CUDA memory on a GPU) is its own. The loop is a plain forward/backward/AdamW step on random tokens,
with the project's model loading, quantisation, LoRA and checkpointing code: it isolates what precision
and checkpointing cost, without data loading.

    .venv/bin/python benchmarks/precision_memory.py            # prints a Markdown table
    .venv/bin/python benchmarks/precision_memory.py --hidden 1024 --layers 8 --steps 5
    .venv/bin/python benchmarks/precision_memory.py --hidden 1024 --layers 8 --seq-len 512 --only 8bit

An 8-bit base with checkpointing runs twice: as train checkpoints it (reentrant) and as it did before 2026-12-06
(non-reentrant, which leaves every layer's 8-bit inputs alive: models/checkpointing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CONFIGS = [(p, q) for p, q in (("fp32", None), ("bf16", None), ("fp16", None), ("fp32", "8bit"), ("fp32", "4bit"))]


def worker(args):
    import torch

    from llm_tuning.config import TrainConfig
    from llm_tuning.methods import get_method
    from llm_tuning.models import load_model

    cuda = torch.cuda.is_available()
    if args.nonreentrant:  # the way before 2026-12-06, for the side-by-side row
        import llm_tuning.models.checkpointing as checkpointing

        checkpointing._int8_base = lambda model: False
    model = load_model(args.model_dir, args.precision, quantization=args.quantization or None)
    if not cuda and not args.quantization:
        model = model.cpu()
    elif cuda and not args.quantization:
        model = model.cuda()
    if args.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = TrainConfig(model=args.model_dir, data="-", output_dir="-", method="lora", precision=args.precision,
                      lora_dropout=0.0, quantization=args.quantization or None, gradient_checkpointing=args.gc)
    torch.manual_seed(0)  # the same adapter start in every configuration
    model = get_method("lora").prepare(model, cfg)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (args.batch_size, args.seq_len), device=device)
    model.train()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    out = {"tokens_per_s": args.steps * args.batch_size * args.seq_len / dt, "loss": loss,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "train_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024}
    if cuda:
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated bases to run: full, 8bit, 4bit (default: all)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--quantization", default="", help=argparse.SUPPRESS)
    ap.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nonreentrant", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
                             num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                             num_key_value_heads=max(1, args.hidden // 64))
        model = LlamaForCausalLM(config)
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp)
        del model
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        print(f"LoRA (r=8, q_proj+v_proj) on a random Llama of {n / 1e6:.1f}M parameters (hidden {args.hidden}, "
              f"{args.layers} layers), batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps; {device}\n")
        cuda = torch.cuda.is_available()
        head = ("| precision | base | checkpointing | tokens/s | peak RSS MiB | RSS growth in training MiB | loss |"
                + (" peak CUDA MiB |" if cuda else ""))
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        only = set(filter(None, args.only.split(",")))
        for precision, quant in CONFIGS:
            if only and (quant or "full") not in only:
                continue
            for gc, before in [(False, False), (True, False)] + ([(True, True)] if quant == "8bit" else []):
                cmd = [sys.executable, __file__, "--worker", "--model-dir", tmp, "--precision", precision,
                       "--quantization", quant or "", "--seq-len", str(args.seq_len), "--batch-size",
                       str(args.batch_size), "--steps", str(args.steps)] + (["--gc"] if gc else []) \
                    + (["--nonreentrant"] if before else [])
                r = subprocess.run(cmd, capture_output=True, text=True)
                line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
                mode = "on, non-reentrant (before)" if before else "on" if gc else "off"
                name = f"| {precision} | {quant or 'full'} | {mode} |"
                if line is None:
                    err = (r.stderr.strip().splitlines() or ["?"])[-1][:80]
                    print(f"{name} failed: {err} | | | |" + (" |" if cuda else ""), flush=True)
                    continue
                m = json.loads(line[7:])
                print(f"{name} {m['tokens_per_s']:.0f} | {m['peak_rss_mib']:.0f} | {m['train_rss_growth_mib']:.0f} | "
                      f"{m['loss']:.6f} |"
                      + (f" {m['peak_cuda_mib']:.0f} |" if cuda else ""), flush=True)


if __name__ == "__main__":
    main()
