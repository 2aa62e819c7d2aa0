"""The texts a comparison measures forgetting on: a file the user names (`forget_data`), or else a fixed, seeded
sample of the base model's own generations, a proxy for what it was pretrained on (PEFT's method comparison uses
Wikipedia, which a model trained on stories or on Chinese text never saw).

The sample: `forget_texts` texts of at most `forget_tokens` tokens each, sampled from the base at temperature 1
(no top-p, no loop guard) from the start token alone (its bos, or its eos where it has none), with a fixed seed.
It is written to the comparison's data/forget.json as records of {"text": ...}, which every later evaluation (and
`llm-tuning eval --data data/forget.json`) reads.
"""

from __future__ import annotations

import json
import os

SEED = 0  # the sample's seed: the same texts for every comparison of one model
FILE = "forget.json"


def describe(cc, texts: list[str]) -> str:
    """What the forgetting is measured on, for the report."""
    if cc.forget_data:
        return f"the {len(texts)} texts of `{cc.forget_data}`"
    return (f"{len(texts)} texts of at most {cc.forget_tokens} tokens that the base model generated itself "
            f"(sampled at temperature 1 from its start token, seed {SEED}; data/{FILE}): a proxy for what it was "
            f"pretrained on")


def generate_texts(model_path: str, count: int, max_new_tokens: int, seed: int = SEED, batch_size: int = 8,
                   precision: str = "fp32") -> list[str]:
    """`count` texts the base model writes from its start token alone, sampled at temperature 1."""
    from ..data.tokenize import start_token
    from ..infer import load_for_inference
    from ..infer.generate import generate_ids

    model, tok, _ = load_for_inference(model_path, None, precision)
    outs = generate_ids(model, [[start_token(tok)]] * count, tok.eos_token_id, tok.pad_token_id, max_new_tokens,
                        batch_size, do_sample=True, temperature=1.0, top_p=1.0, seed=seed)
    return [tok.decode(o, skip_special_tokens=True).strip() for o in outs]


def forget_texts(cc, data_dir: str, fresh: bool, log) -> list[str]:
    """The comparison's forgetting texts: forget_data's, or the base's own sample (read from data_dir when an
    earlier invocation wrote it, unless `fresh`: --force samples anew)."""
    from ..data.texts import load_texts

    if cc.forget_data:
        return load_texts(cc.forget_data)
    path = os.path.join(data_dir, FILE)
    if os.path.exists(path) and not fresh:
        return load_texts(path)
    log(f"forgetting: sampling {cc.forget_texts} texts of at most {cc.forget_tokens} tokens from the base model ...")
    texts = [t for t in generate_texts(cc.model, cc.forget_texts, cc.forget_tokens) if t]  # an eos at once: none
    write_texts(data_dir, texts)
    return texts


def write_texts(data_dir: str, texts: list[str]) -> None:
    """data_dir/forget.json: the sampled texts as records of {"text": ...}."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump([{"text": t} for t in texts], f, ensure_ascii=False, indent=0)
    os.replace(path + ".tmp", path)
