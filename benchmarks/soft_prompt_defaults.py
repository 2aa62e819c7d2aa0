"""The prompt method (`--method prompt`, soft: `--prompt-init random`, or `--prompt-init text`) around its defaults, on
stories260K with the English alpaca-gpt4 records: 60 steps of batch 4 at max length 512 (train's default;
--max-length), per training seed, the change of the held-out loss against the untouched base. Prints a markdown
table: one row per learning rate, one column per seed, and the mean.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soft_prompt_defaults.py --lrs 0.1,0.3,0.9 --eval choose
    ... --init-std embeddings --lrs 0.03,0.1,0.3   # the soft prompt drawn at the embeddings' own std
    ... --tokens 20                               # 20 virtual tokens
    ... --init text --max-length 128              # the hard prompt, at the defaults test's length
    ... --eval confirm --lrs 0.3                  # the chosen rate on records that chose nothing

The records: the training records and the records that choose a setting (`--eval choose`) are the split of
tests/test_defaults_learn.py (the first 400 records, 40 split off with seed 0); `--eval confirm` scores records
400-899 instead, which neither train nor choose anything. Every other option is `train`'s default.
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "..", "shared", "data", "models", "stories260K-hf")
EN_DATA = os.path.join(ROOT, "..", "shared", "data", "alpaca_gpt4_en", "alpaca_en_train.json")
STEPS = 60


def _one_thread():
    import torch

    torch.set_num_threads(1)


def _draw_at(init_std):
    """Scale the soft prompt's start: 'embeddings' (the input embeddings' element std), a number, or None (PEFT's
    N(0, 1), untouched)."""
    if init_std is None:
        return
    import torch

    from llm_tuning.methods.prompt import PromptTuning

    apply = PromptTuning.apply

    def scaled(self, model, cfg):
        std = model.get_input_embeddings().weight.std().item() if init_std == "embeddings" else float(init_std)
        peft_model = apply(self, model, cfg)
        weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
        with torch.no_grad():
            weight.mul_(std / weight.std())
        return peft_model

    PromptTuning.apply = scaled


def _learn(point: dict, data: str, eval_recs: list, out: str) -> float:
    from llm_tuning.config import TrainConfig
    from llm_tuning.evaluate import response_loss
    from llm_tuning.infer import load_for_inference
    from llm_tuning.train import train

    _draw_at(point["init_std"])
    cfg = TrainConfig(model=STORIES, data=data, output_dir=out, method="prompt", prompt_init=point["init"],
                      lr=point["lr"], num_virtual_tokens=point["tokens"], max_steps=STEPS,
                      max_length=point["max_length"], save_steps=10**6, seed=point["seed"], quiet=True)
    train(cfg)
    model, tok, _ = load_for_inference(STORIES, out)
    return response_loss(model, tok, eval_recs, max_length=point["max_length"])["loss"]


def records(which: str):
    from llm_tuning.data.formats import load_records, split_records

    every = load_records(EN_DATA).records
    train_recs, choose = split_records(every[:400], 40, seed=0)
    return train_recs, (choose if which == "choose" else every[400:900])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrs", default="0.1", help="comma-separated learning rates")
    ap.add_argument("--init", default="random", choices=["random", "text", "vocab"])
    ap.add_argument("--init-std", default=None, help="'embeddings' or a number (default: PEFT's N(0, 1))")
    ap.add_argument("--tokens", type=int, default=10, help="virtual tokens")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--eval", default="choose", choices=["choose", "confirm"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default="", help="append the rows (JSON lines) here")
    args = ap.parse_args()

    _one_thread()
    from llm_tuning.evaluate import response_loss
    from llm_tuning.infer import load_for_inference

    train_recs, eval_recs = records(args.eval)
    model, tok, _ = load_for_inference(STORIES)
    base = response_loss(model, tok, eval_recs, max_length=args.max_length)["loss"]
    seeds = [int(s) for s in args.seeds.split(",")]
    setting = dict(init=args.init, init_std=args.init_std, tokens=args.tokens, max_length=args.max_length)
    points = [dict(setting, lr=float(lr), seed=s) for lr in args.lrs.split(",") for s in seeds]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.json")
        with open(data, "w") as f:
            json.dump(train_recs, f)
        with ProcessPoolExecutor(args.workers, multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
            futures = [pool.submit(_learn, p, data, eval_recs, os.path.join(tmp, f"p{i}"))
                       for i, p in enumerate(points)]
            for p, fut in zip(points, futures):
                p.update(loss=fut.result(), base=base, eval=args.eval)
                p["delta"] = p["loss"] - base
                print(json.dumps(p), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(p) + "\n" for p in points)
    start = f" (std {args.init_std or 'PEFT N(0, 1)'})" if args.init == "random" else ""
    print(f"\n{len(train_recs)} training records, {len(eval_recs)} {args.eval} records, {STEPS} steps of batch 4 at "
          f"length {args.max_length}; init {args.init}{start}, {args.tokens} virtual tokens; base loss {base:.4f}; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| lr | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |\n" + "|---" * (len(seeds) + 2) + "|")
    for lr in dict.fromkeys(p["lr"] for p in points):
        deltas = [p["delta"] for p in points if p["lr"] == lr]
        print(f"| {lr:g} | " + " | ".join(f"{d:+.3f}" for d in deltas) + f" | {sum(deltas) / len(deltas):+.3f} |")


if __name__ == "__main__":
    main()
