"""Every method variant at its defaults on the pretrained stories260K with the English alpaca-gpt4 records: held-out
loss after N steps against the untouched base model's on the same held-out records. Prints a markdown table.

    .venv/bin/python benchmarks/methods_at_defaults.py [--steps 60] [--val 100] [--max-length 512] [--variants a,b]

Everything but the data split, the step count and `save_steps` (no checkpoint is written) is the `train` default:
batch size 4, the method's own learning rate (methods/*.py `default_lr`), max length 512, seed 42.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "..", "shared", "data", "models", "stories260K-hf")
EN_DATA = os.path.join(ROOT, "..", "shared", "data", "alpaca_gpt4_en", "alpaca_en_train.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=STORIES)
    ap.add_argument("--data", default=EN_DATA)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--val", type=int, default=100, help="held-out records (split off with seed 0)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None, help="default: train's")
    ap.add_argument("--variants", default="", help="comma-separated names (default: all)")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args()

    from llm_tuning.config import TrainConfig
    from llm_tuning.data.formats import load_records, split_records
    from llm_tuning.infer import load_for_inference
    from llm_tuning.methods import METHODS, VARIANTS
    from llm_tuning.train import train
    from llm_tuning.evaluate import response_loss

    names = [n for n in args.variants.split(",") if n] or list(VARIANTS)
    train_recs, val_recs = split_records(load_records(args.data).records, args.val, seed=0)
    model, tok, _ = load_for_inference(args.model)
    base = response_loss(model, tok, val_recs, max_length=args.max_length)["loss"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.json")
        val = os.path.join(tmp, "val.json")
        with open(data, "w") as f:
            json.dump(train_recs, f)
        with open(val, "w") as f:
            json.dump(val_recs, f)
        for name in names:
            overrides = dict(VARIANTS[name])
            method = overrides.pop("method")
            extra = {} if args.batch_size is None else {"batch_size": args.batch_size}
            cfg = TrainConfig(model=args.model, data=data, method=method, output_dir=os.path.join(tmp, name),
                              max_steps=args.steps, max_length=args.max_length, save_steps=10**6, **extra,
                              **overrides)
            t = time.perf_counter()
            train(cfg)
            secs = time.perf_counter() - t
            m, tk, _ = load_for_inference(args.model, cfg.output_dir)
            loss = response_loss(m, tk, val_recs, max_length=args.max_length)["loss"]
            rows.append(dict(variant=name, method=method, lr=METHODS[method].default_lr, held_out=loss, base=base,
                             delta=loss - base, seconds=secs))
            print(f"{name}: {loss:.4f} (base {base:.4f}, {loss - base:+.4f}) in {secs:.1f} s", file=sys.stderr)
    print(f"\n{len(train_recs)} training / {len(val_recs)} held-out records, {args.steps} steps, max length "
          f"{args.max_length}, base held-out loss {base:.4f}\n")
    print("| variant | lr | held-out loss | base | delta |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['lr']:g} | {r['held_out']:.4f} | {r['base']:.4f} | {r['delta']:+.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
