"""Data preparation at scale: tokenise 50,000 alpaca records (the 900 Chinese ones of ../shared/data repeated),
then again with the same data and tokenizer, which the cache serves. Prints a table.

    .venv/bin/python benchmarks/tokenize_cache.py [--records 50000] [--tokenizer ../shared/data/tokenizers/chinese-llama2]
"""

import argparse
import os
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--data", default="../shared/data/alpaca_gpt4_zh/alpaca_zh_train.json")
    ap.add_argument("--tokenizer", default="../shared/data/tokenizers/chinese-llama2")
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["LLM_TUNING_CACHE"] = cache
        from llm_tuning.data.cache import tokenized_dataset
        from llm_tuning.data.formats import load_records
        from llm_tuning.data.tokenize import prepare_tokenizer
        from llm_tuning.models import load_tokenizer

        base = load_records(args.data).records
        records = (base * (args.records // len(base) + 1))[: args.records]
        tok = prepare_tokenizer(load_tokenizer(args.tokenizer), log=lambda m: None)
        rows = []
        for label in ("first run (tokenise + write cache)", "second run (cache)"):
            t = time.perf_counter()
            ds, dropped = tokenized_dataset(tok, records, "default", args.max_length, log=lambda m: None)
            secs = time.perf_counter() - t
            n_tokens = int(ds.data.column("input_ids").combine_chunks().offsets.to_numpy()[-1])
            rows.append((label, secs, len(ds), n_tokens))
        print(f"{args.records:,} records, tokenizer {args.tokenizer} ({len(tok):,} tokens), "
              f"max length {args.max_length}, {os.cpu_count()} cores\n")
        print("| run | seconds | examples | tokens | vs first |\n|---|---|---|---|---|")
        for label, secs, n, toks in rows:
            print(f"| {label} | {secs:.2f} | {n:,} | {toks:,} | {secs / rows[0][1]:.1%} |")


if __name__ == "__main__":
    main()
