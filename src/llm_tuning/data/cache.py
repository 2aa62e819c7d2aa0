"""A cache of tokenised training data, as `datasets` Arrow folders keyed by everything that shapes them.

Tokenising is the slow part of start-up on real data (50,000 records: ~16 s here), and every run of a
comparison, every resume and every re-run tokenises the same records with the same tokenizer again. The key
covers the records themselves (their system prompt and history included), the template, --train-on,
--max-length, the tokenizer's full definition (its chat template included, which --template auto renders with)
and the code version of the encoding, so a hit is always the same data. Location: $LLM_TUNING_CACHE, else
~/.cache/llm-tuning/tokenized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

ENCODING_VERSION = 3  # bump when encode_records changes what it produces


def cache_root() -> str:
    return os.environ.get("LLM_TUNING_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llm-tuning", "tokenized")


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, tokenizer("a b")["input_ids"],
                         getattr(tokenizer, "chat_template", None)]).encode())
    return h.hexdigest()


def cache_key(tokenizer, records, template: str, max_length: int, train_on: str = "all") -> str:
    h = hashlib.sha256()
    h.update(json.dumps(records, ensure_ascii=False, sort_keys=True).encode())
    h.update(json.dumps([template, max_length, ENCODING_VERSION, tokenizer_fingerprint(tokenizer),
                         train_on]).encode())
    return h.hexdigest()[:32]


def tokenized_dataset(tokenizer, records, template: str, max_length: int, use_cache: bool = True, log=print,
                      train_on: str = "all"):
    """(datasets.Dataset with input_ids and labels, number of records dropped), from the cache when possible."""
    import datasets

    from .tokenize import encode_records, to_dataset

    if not use_cache:
        enc = encode_records(tokenizer, records, template, max_length, train_on)
        return to_dataset(enc), enc.dropped
    path = os.path.join(cache_root(), cache_key(tokenizer, records, template, max_length, train_on))
    meta = os.path.join(path, "llm_tuning_meta.json")
    if os.path.exists(meta):
        with open(meta) as f:
            dropped = json.load(f)["dropped"]
        log(f"tokenised data from the cache ({path})")
        return datasets.load_from_disk(path), dropped
    enc = encode_records(tokenizer, records, template, max_length, train_on)
    ds = to_dataset(enc)
    tmp = path + f".tmp-{os.getpid()}"
    try:
        _save_quietly(ds, tmp)
        with open(os.path.join(tmp, "llm_tuning_meta.json"), "w") as f:
            json.dump({"dropped": enc.dropped, "records": len(records), "template": template,
                       "train_on": train_on, "max_length": max_length}, f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(tmp, path)  # atomic: a concurrent or killed writer never leaves a half cache entry
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(meta):
            log(f"could not write the tokenisation cache ({e}); continuing without it")
    return ds, enc.dropped


def _save_quietly(ds, path: str):
    """save_to_disk without datasets' "Saving the dataset (1/1 shards)" bars: a cache write of a second or less,
    noise beside the training's own bar. The caller's setting is restored."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds.save_to_disk(path)
    finally:
        if was_on:
            ds_logging.enable_progress_bar()
