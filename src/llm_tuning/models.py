"""Loading models and tokenizers, precision, and building tiny models from a config.

Loading never runs pickled code: weights are read from safetensors only, and
`trust_remote_code` stays off unless the user asks for it.
"""

from __future__ import annotations

import json
import os

from .errors import UserError
from .paths import looks_like_local_path

PRECISIONS = ("fp32", "bf16", "fp16")
SAMPLE_DATA = os.path.join(os.path.dirname(__file__), "data", "samples", "zh_sample.json")


def quiet_libraries():
    """Silence notices that are noise for our users (they do not change results)."""
    import logging
    import warnings

    # bitsandbytes offers an optional CPU kernel fetched from the hub; there is none to fetch offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
    # PEFT 0.21 still hands the prefix to transformers 5 as `past_key_values` (a rename notice, nothing wrong).
    warnings.filterwarnings("ignore", message=".*`past_key_values` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Position ids are not supported for parameter efficient tuning.*")
    # PEFT still reads the deprecated `is_gradient_checkpointing` property of transformers 5.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def skip_bitsandbytes():
    """Keep bitsandbytes out of a process that will not quantise. PEFT and the transformers Trainer import it
    whenever it is installed, and bitsandbytes 0.50 imports torch's inductor compiler on the way: ~3 s of
    start-up and ~44 MiB of memory here (benchmarks/train_throughput.py). An entry of None in sys.modules is how
    Python marks a module as unavailable: `import` raises ImportError and importlib's find_spec answers None, so
    both libraries take their no-bitsandbytes path. For whole-process commands only (the CLI), never inside a
    library call: a later quantised load in the same process would fail."""
    import sys

    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None


def torch_dtype(precision: str):
    import torch

    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    except KeyError:
        raise UserError(f"--precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}") from None


def check_source(name: str, what: str = "model"):
    """Fail early, before heavy imports, on a local path that is not there."""
    if looks_like_local_path(name) and not os.path.exists(name):
        raise UserError(f"{name}: no such {what} folder")
    if os.path.isfile(name):
        raise UserError(f"{name}: is a file; expected a {what} folder or a hub id")


def _hub_error(name: str, what: str, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{name}: could not load the {what} ({first})")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    check_source(name, "tokenizer")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name, "tokenizer", e) from None


QUANTIZATIONS = ("8bit", "4bit")


def quantization_config(quantization: str, precision: str = "fp32", int8_threshold: float = 6.0):
    """bitsandbytes settings: LLM.int8 with its outlier threshold, or NF4 with double quantisation."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch_dtype(precision))
    raise UserError(f"--quantization {quantization!r} is unknown; choose 8bit or 4bit")


def load_model(name: str, precision: str = "fp32", trust_remote_code: bool = False, quantization: str | None = None,
               int8_threshold: float = 6.0, speedups: bool = True, **kwargs):
    check_source(name, "model")
    quiet_libraries()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise next to our own progress

    dtype = torch_dtype(precision)
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization, precision, int8_threshold)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as e:
        raise _hub_error(name, "model", e) from None
    _avoid_bnb_cpu_packing_crash(model)  # also for a folder saved already quantised
    if speedups:
        from .speedups import speed_up

        speed_up(model)
    return model


def _avoid_bnb_cpu_packing_crash(model):
    """bitsandbytes 0.50 repacks 4-bit weights for an AVX512-BF16 CPU kernel on the first no-grad forward. That
    path computes in bf16 whatever the compute dtype (so eval would not match training, which never takes it), and
    it crashes unless out_features % 32 == 0 and in_features is a multiple of 64 (stories260K's MLP is 172 wide).
    Every 4-bit layer keeps the generic path: the same numerics in training, evaluation and merge."""
    for module in model.modules():
        if module.__class__.__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = False


def is_prompt_learning(model) -> bool:
    """A PEFT model whose adapter adds virtual tokens or a prefix (prompt tuning, P-tuning, prefix tuning)."""
    cfg = getattr(model, "active_peft_config", None)
    return bool(cfg is not None and getattr(cfg, "is_prompt_learning", False))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), each shared (tied) tensor counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already yields a tied tensor once
        n = p.numel()
        # bitsandbytes 4-bit weights are packed two per byte
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def describe_parameters(model) -> str:
    trainable, total = count_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} / total: {total:,} ({pct:.4f}%)"


# ---------------------------------------------------------------- tiny models

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
    from .data.formats import load_records

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
               vocab_size: int = 2000, seed: int = 0, init_std: float = 0.02, log=print, **sizes):
    """Build a small random model of `arch` with a tokenizer, and save both to `output`.

    The tokenizer is either an existing folder (`tokenizer`) or a byte-level BPE trained on
    `train_text` (an alpaca data file; default: the bundled Chinese sample).
    """
    if os.path.exists(output) and os.listdir(output):
        raise UserError(f"{output}: exists and is not empty; choose a new --output")
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
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    with open(os.path.join(output, "llm_tuning_init.json"), "w") as f:
        json.dump({"arch": arch, "tokenizer": source, "seed": seed}, f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    log(f"built a random {arch} with {n:,} parameters; tokenizer: {source}; saved to {output}")
    return output
