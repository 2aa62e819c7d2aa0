"""The `llm-tuning` command: a thin layer over the Python API.

Nothing heavy is imported at module level, so `--help` and input errors answer at once.
A UserError becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import parse_bool
from .errors import UserError


def _add_train(sub):
    p = sub.add_parser("train", help="fine-tune a model with one method", argument_default=argparse.SUPPRESS,
                       description="Fine-tune a causal LM. Every option may also be set in --config FILE.yaml "
                                   "(same names, dashes or underscores); flags override the file.")
    p.add_argument("--config", help="YAML file with any of the options below")
    p.add_argument("--model", help="base model: local folder or hub id")
    p.add_argument("--data", help="alpaca data: .json list, .jsonl, save_to_disk folder, or hub dataset name")
    p.add_argument("--method", help="full, bitfit, prompt, ptuning, prefix, lora, ia3 (default lora)")
    p.add_argument("--output-dir", help="where the adapter, checkpoints, config and metrics go")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--template", help="prompt template: default (Human:/Assistant:) or llama2")
    p.add_argument("--max-length", type=int, help="truncate examples to this many tokens (default 512)")
    p.add_argument("--skip-bad-records", action="store_true", help="drop invalid records (counted) instead of failing")
    p.add_argument("--cache", type=parse_bool, nargs="?", const=True, help="reuse tokenised data across runs (default true)")
    p.add_argument("--val-size", type=float, help="held-out split: a fraction (<1) or a count (>=1)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, help="learning rate (default: per method)")
    p.add_argument("--batch-size", type=int, help="examples per device step (default 4)")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-scheduler", help="transformers scheduler name (default linear)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--precision", help="fp32, bf16 or fp16 (default fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass to save memory (every method, prefix included)")
    p.add_argument("--group-by-length", type=parse_bool, nargs="?", const=True,
                   help="batch examples of similar length together (default true)")
    p.add_argument("--fast-loss", type=parse_bool, nargs="?", const=True,
                   help="compute the output layer only on learned positions (default true; every method)")
    p.add_argument("--speedups", type=parse_bool, nargs="?", const=True,
                   help="Bloom: SDPA attention and torch's tanh-GeLU in place of transformers' eager ones (default true)")
    p.add_argument("--quantization", help="load the base 8bit (LLM.int8) or 4bit (NF4) through bitsandbytes")
    p.add_argument("--int8-threshold", type=float, help="LLM.int8 outlier threshold (default 6.0)")
    p.add_argument("--adam-epsilon", type=float, help="optimiser epsilon (default 1e-8; 1e-4 when fp16 weights train)")
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps (default 50)")
    p.add_argument("--save-total-limit", type=int)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--logging-steps", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    g = p.add_argument_group("prompt / p-tuning / prefix")
    g.add_argument("--num-virtual-tokens", type=int, help="virtual tokens (default 10)")
    g.add_argument("--prompt-init", help="prompt tuning start: text (hard prompt) or random (soft)")
    g.add_argument("--prompt-text", help="text whose embeddings start the hard prompt")
    g.add_argument("--encoder", help="p-tuning encoder: mlp or lstm")
    g.add_argument("--encoder-hidden-size", type=int, help="p-tuning / prefix projection width (default: model hidden size)")
    g.add_argument("--prefix-projection", type=parse_bool, nargs="?", const=True, help="prefix through an MLP (true/false)")
    g = p.add_argument_group("lora")
    g.add_argument("--lora-r", type=int, help="rank (default 8)")
    g.add_argument("--lora-alpha", type=int, help="scale numerator (default 16)")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0.05)")
    g.add_argument("--target-modules", help="comma-separated module names (default: per architecture)")
    return p


def _add_common_model(p, adapter=True):
    p.add_argument("--model", required=True, help="base model folder or hub id")
    if adapter:
        p.add_argument("--adapter", help="adapter folder written by `llm-tuning train`")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--quantization", help="load the base 8bit or 4bit (as it was trained)")
    p.add_argument("--template", default=None, help="prompt template (default: the adapter's, else 'default')")
    p.add_argument("--trust-remote-code", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-tuning", description="Parameter-efficient fine-tuning of causal LMs.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the embedded default: tiny model + bundled Chinese sample, LoRA, merge, generate")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--steps", type=int, default=200, help="LoRA steps (the stand-in pre-training takes as many)")

    p = sub.add_parser("init-model", help="build a tiny random Bloom or Llama with a tokenizer")
    p.add_argument("--arch", required=True, choices=["bloom", "llama"])
    p.add_argument("--output", required=True)
    p.add_argument("--tokenizer", help="existing tokenizer folder (default: train a BPE)")
    p.add_argument("--train-text", help="alpaca data to train the BPE on (default: the bundled Chinese sample)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--num-kv-heads", type=int)
    p.add_argument("--intermediate-size", type=int)
    p.add_argument("--seed", type=int, default=0)

    _add_train(sub)

    p = sub.add_parser("merge", help="fold a LoRA / IA3 / BitFit adapter into its base model")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--save-precision", default="fp32", help="dtype of the written model: fp32, fp16 or bf16")
    p.add_argument("--save-quantization", help="re-quantise the merged model (8bit or 4bit) before saving")
    p.add_argument("--merge-base", default="auto",
                   help="for an adapter trained on a quantised base: original weights, or the dequantized quantised "
                        "ones (auto: dequantized for 4bit, original for 8bit)")
    p.add_argument("--trust-remote-code", action="store_true")

    p = sub.add_parser("generate", help="answer an instruction")
    _add_common_model(p)
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--input", default="", help="optional input for the instruction")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)

    p = sub.add_parser("eval", help="held-out response loss and perplexity")
    _add_common_model(p)
    p.add_argument("--data", required=True)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="evaluate only the first N records")
    p.add_argument("--skip-bad-records", action="store_true")
    p.add_argument("--generate", action="store_true",
                   help="also answer each record (greedy) and score it: ROUGE-1/2/L on jieba words, BLEU-4 on characters")
    p.add_argument("--max-new-tokens", type=int, default=128, help="with --generate: answer length limit")
    p.add_argument("--predictions", help="with --generate: write prompt/reference/prediction JSONL here")
    p.add_argument("--json", action="store_true", help="print JSON (loss, perplexity, records, tokens[, rouge-1, ...])")
    from .estimate import add_parser as add_estimate_parser

    add_estimate_parser(sub)

    p = sub.add_parser("compare", help="run several methods on one budget and write a report (table + plots)")
    p.add_argument("--config", required=True, help="compare YAML: model, data, output_dir, budget_tokens, runs")
    p.add_argument("--force", action="store_true", help="rerun runs that already have a result.json")
    return ap


def _cmd_estimate(args):
    from .estimate import main as estimate_main

    estimate_main(args)


def _cmd_compare(args):
    from .compare import run_compare

    run_compare(args.config, args.force)


def _cmd_train(args):
    from .config import build_config, load_yaml
    from .train import train

    flags = vars(args).copy()
    flags.pop("command")
    path = flags.pop("config", None)
    cfg = build_config(load_yaml(path) if path else None, flags, path or "config")
    if not cfg.quantization:
        from .models import skip_bitsandbytes

        skip_bitsandbytes()
    train(cfg)


def _template(args, info):
    return args.template or info.get("template") or "default"


def _cmd_generate(args):
    from .infer import generate, load_for_inference

    model, tok, info = load_for_inference(args.model, args.adapter, args.precision, args.trust_remote_code, args.quantization)
    rec = {"instruction": args.prompt, "input": args.input, "output": ""}
    print(generate(model, tok, [rec], _template(args, info), args.max_new_tokens, do_sample=args.sample,
                   temperature=args.temperature, top_p=args.top_p)[0])


def _cmd_eval(args):
    from .data.formats import load_records

    records = load_records(args.data, args.skip_bad_records).records
    if args.limit:
        records = records[: args.limit]
    from .evaluate import response_loss
    from .infer import load_for_inference

    model, tok, info = load_for_inference(args.model, args.adapter, args.precision, args.trust_remote_code, args.quantization)
    template = _template(args, info)
    r = response_loss(model, tok, records, template, args.max_length, args.batch_size)
    if args.generate:
        from .evaluate import generation_metrics

        g = generation_metrics(model, tok, records, template, args.max_new_tokens, args.batch_size, args.predictions)
        r.update({k: g[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")})
    if args.json:
        print(json.dumps(r))
        return
    print("| metric | value |\n|---|---|")
    for key in ("records", "tokens", "loss", "perplexity", "rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        if key in r:
            v = r[key]
            print(f"| {key} | {v if isinstance(v, int) else f'{v:.4f}'} |")
    if args.predictions:
        print(f"predictions written to {args.predictions}")


def _cmd_merge(args):
    from .infer import merge

    merge(args.model, args.adapter, args.output, args.overwrite, args.trust_remote_code, args.save_precision,
          args.merge_base, args.save_quantization)


def _cmd_init_model(args):
    from .models import init_model

    init_model(args.arch, args.output, tokenizer=args.tokenizer, train_text=args.train_text, vocab_size=args.vocab_size,
               seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
               num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size)


def _cmd_demo(args):
    from .demo import run_demo

    run_demo(args.output_dir, args.steps)


COMMANDS = {"train": _cmd_train, "generate": _cmd_generate, "eval": _cmd_eval, "merge": _cmd_merge,
            "init-model": _cmd_init_model, "demo": _cmd_demo, "compare": _cmd_compare,
            "estimate": _cmd_estimate}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .models import quiet_libraries

    quiet_libraries()
    try:
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"llm-tuning {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm-tuning {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
