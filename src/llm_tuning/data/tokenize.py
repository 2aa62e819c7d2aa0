"""Tokenise records for causal-LM supervised fine-tuning.

Each example is prompt + response + eos. The prompt is masked out of the labels
(-100), so the loss covers exactly the response tokens and the eos token. eos is
appended *by id*: the Llama-2 tokenizer never appends it, and a literal "</s>"
string inside text is not reliably tokenised as the eos token.
"""

from __future__ import annotations

from dataclasses import dataclass

from .templates import format_prompt

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    dropped: int  # examples whose response was truncated away entirely


def prepare_tokenizer(tokenizer, log=print):
    """pad = eos when the tokenizer has no pad token. (Right padding for training is the guard's job.)"""
    if tokenizer.eos_token_id is None:
        from ..errors import UserError

        raise UserError("the tokenizer has no eos token; set one in tokenizer_config.json (eos_token)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        log(f"tokenizer has no pad token: using eos ({tokenizer.eos_token!r}, id {tokenizer.eos_token_id}) as pad")
    return tokenizer


def _strip_eos(ids, eos: int) -> list[int]:
    # A tokenizer configured with add_eos_token would end the prompt with eos, teaching the model to stop at once.
    ids = list(ids)
    return ids[:-1] if ids and ids[-1] == eos else ids


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return _strip_eos(tokenizer(prompt, add_special_tokens=True)["input_ids"], tokenizer.eos_token_id)


def encode_records(tokenizer, records: list[dict], template: str = "default", max_length: int = 512) -> Encoded:
    prompts = [format_prompt(r, template) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer([r["output"] for r in records], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out_ids, out_labels, dropped = [], [], 0
    for p, r in zip(prompt_ids, response_ids):
        p = _strip_eos(p, eos)
        r = list(r) + [eos]
        ids = (p + r)[:max_length]
        labels = ([IGNORE] * len(p) + r)[:max_length]
        if all(x == IGNORE for x in labels):
            dropped += 1  # prompt alone fills max_length: nothing to learn, and it would make a 0/0 loss
            continue
        out_ids.append(ids)
        out_labels.append(labels)
    return Encoded(out_ids, out_labels, dropped)


def to_dataset(enc: Encoded):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": enc.input_ids, "labels": enc.labels})
