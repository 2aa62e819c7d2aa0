"""Tiny random Bloom / Llama models with a byte-level BPE trained on alpaca records: `llm-tuning init-model`."""

from __future__ import annotations

import json
import os

from ..data import SAMPLE_DATA
from ..errors import UserError, spell
from .load import load_tokenizer

TINY_DEFAULTS = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}


def train_bpe_tokenizer(texts, vocab_size: int = 2000):
    """A byte-level BPE trained with the `tokenizers` library, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _texts_from_records(path: str):
    from ..data.formats import load_records

    for r in load_records(path).records:
        yield r["instruction"] + "\n" + r["input"] + "\n" + r["output"]


def tiny_config(arch: str, vocab_size: int, tokenizer=None, init_std: float = 0.02, **sizes):
    from transformers import BloomConfig, LlamaConfig

    s = {**TINY_DEFAULTS, **{k: v for k, v in sizes.items() if v is not None}}
    special = {}
    if tokenizer is not None:
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    if arch == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=s["hidden_size"], n_layer=s["num_layers"],
                           n_head=s["num_heads"], initializer_range=init_std, **special)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                           num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                           num_key_value_heads=s["num_kv_heads"], max_position_embeddings=2048,
                           tie_word_embeddings=False, initializer_range=init_std, **special)
    raise UserError(f"--arch {arch!r} is unknown; choose bloom or llama")


def init_model(arch: str, output: str, tokenizer: str | None = None, train_text: str | None = None,
               vocab_size: int = 2000, seed: int = 0, init_std: float = 0.02, log=print, overwrite: bool = False,
               **sizes):
    """Build a small random model of `arch` with a tokenizer, and save both to `output` (overwrite: replace
    what is there, once the tokenizer is ready, so a bad --tokenizer leaves the old model in place).

    The tokenizer is either an existing folder (`tokenizer`) or a byte-level BPE trained on
    `train_text` (an alpaca data file; default: the bundled Chinese sample).
    """
    if os.path.isfile(output):
        raise UserError(f"{spell('output', output)}: is a file; choose a folder")
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise UserError(f"{spell('output', output)}: exists and is not empty; choose a new folder or pass "
                        f"{spell('overwrite')}")
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        source = tokenizer
    else:
        text_path = train_text or SAMPLE_DATA
        texts = list(_texts_from_records(text_path))
        tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
        source = f"byte-level BPE ({len(tok)} tokens) trained on {text_path}"
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok), tok, init_std=init_std, **sizes)
    model = AutoModelForCausalLM.from_config(config)
    if overwrite and os.path.isdir(output):
        import shutil

        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    with open(os.path.join(output, "llm_tuning_init.json"), "w") as f:
        json.dump({"arch": arch, "tokenizer": source, "seed": seed}, f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    log(f"built a random {arch} with {n:,} parameters; tokenizer: {source}; saved to {output}")
    return output
