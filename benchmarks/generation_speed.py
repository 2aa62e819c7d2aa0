"""New tokens per second of `infer.generate`'s cached decoding, every method, against transformers' own
`generate` on the base model: 128 new tokens, batch 1 and 8, all in one run.

    .venv/bin/python benchmarks/generation_speed.py            # stories260K-hf from ../shared/data, else a tiny Llama
    .venv/bin/python benchmarks/generation_speed.py --model DIR --new-tokens 128 --rounds 5

Every answer runs to the full length (eos is never matched), so each configuration decodes the same number of
tokens. The configurations are timed in turn, round after round, and each figure is the median over rounds, so a
shared machine's drift hits them alike; the time is the process's CPU time (one thread by default), which a
busy neighbour does not inflate the way it inflates wall time. The adapters are the methods applied to the base
with their default options (their weights do not change the cost). "uncached" is the decoding prompt-learning methods had before:
a full forward per new token (batch 1 only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the reference decoding lives with the tests (tests/helpers.py)
STORIES = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "models", "stories260K-hf"))

PROMPTS = ["Tell me a story about a cat.", "Write a short poem about the sea.", "What is the color of the sky?",
           "Name three fruits.", "Describe a rainy day in two sentences.", "Why do birds sing?",
           "Give me a tip for sleeping well.", "Explain what a friend is to a child."]
METHODS = ["lora", "ia3", "prompt", "ptuning", "prefix"]


def build(model_path, method):
    from llm_tuning.config import TrainConfig
    from llm_tuning.methods import get_method
    from llm_tuning.models import load_model

    base = load_model(model_path)
    if method == "base":
        return base.eval()
    cfg = TrainConfig(model=model_path, data="-", output_dir="-", method=method, prompt_text="Once upon a time")
    return get_method(method).apply(base, cfg).eval()


def timed(fn) -> float:
    """CPU seconds of this process (all its threads): on a machine shared with other work, wall time measures the
    neighbours as much as the code; with one thread, CPU time is what the decoding itself costs."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: stories260K-hf, else a tiny Llama)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a tiny model gains nothing from more)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from llm_tuning.data.templates import format_prompt
    from llm_tuning.data.tokenize import encode_prompt, prepare_tokenizer
    from helpers import generate_without_cache
    from llm_tuning.infer.generate import generate_ids
    from llm_tuning.models import load_tokenizer

    path = args.model or (STORIES if os.path.isdir(STORIES) else None)
    if path is None:
        from llm_tuning.models import init_model

        path = "/tmp/llm-tuning-generation-speed-tiny"
        if not os.path.isdir(path):
            init_model("llama", path, vocab_size=2000, seed=0, log=lambda m: None)
    tok = prepare_tokenizer(load_tokenizer(path), log=lambda m: None)
    prompts = [encode_prompt(tok, format_prompt({"instruction": p, "input": ""})) for p in PROMPTS]
    new, never = args.new_tokens, -1  # an eos id no token has: every answer runs its full length
    models = {m: build(path, m) for m in ["base"] + METHODS}
    models["base"].generation_config.eos_token_id = None

    def hf_generate(batch):
        ps = prompts[:batch]
        width = max(len(p) for p in ps)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        with torch.no_grad():
            out = models["base"].generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                          eos_token_id=None, pad_token_id=tok.pad_token_id)
        assert out.shape[1] - width == new

    def ours(method, batch):
        outs = generate_ids(models[method], prompts[:batch], never, tok.pad_token_id, new, batch_size=batch)
        assert all(len(o) == new for o in outs)

    def uncached(method):
        assert len(generate_without_cache(models[method], prompts[0], never, new)) == new

    configs = {}
    for batch in (1, 8):
        configs[("base: transformers generate", batch)] = lambda b=batch: hf_generate(b)
        configs[("base", batch)] = lambda b=batch: ours("base", b)
        for m in METHODS:
            configs[(m, batch)] = lambda m=m, b=batch: ours(m, b)
    for m in ("prompt", "ptuning", "prefix"):
        configs[(m + " uncached (before)", 1)] = lambda m=m: uncached(m)
    for fn in configs.values():  # warm-up
        fn()
    times = {k: [] for k in configs}
    for _ in range(args.rounds):
        for k, fn in configs.items():
            times[k].append(timed(fn))
    rate = {k: k[1] * new / statistics.median(v) for k, v in times.items()}

    print(f"model {os.path.basename(os.path.normpath(path))}, {new} new tokens, greedy, fp32, "
          f"{torch.get_num_threads()} thread(s), new tokens per CPU second, median of {args.rounds} rounds\n")
    print("| decoding | batch 1 tok/s | x base | batch 8 tok/s | x base |\n|---|---|---|---|---|")
    names = dict.fromkeys(k[0] for k in configs)
    for name in names:
        cells = []
        for batch in (1, 8):
            r = rate.get((name, batch))
            ref = rate[("base: transformers generate", batch)]
            cells += [f"{r:.0f}", f"{r / ref:.2f}"] if r else ["", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
