"""Loading models and tokenizers: precision, 8/4-bit quantisation through bitsandbytes, Bloom speed-ups.

Loading never runs pickled code: weights are read from safetensors only, and
`trust_remote_code` stays off unless the user asks for it.

A model or tokenizer is a local folder, a Hugging Face hub id, or `modelscope:ORG/NAME`: a ModelScope model read
from ModelScope's local cache (resolve_source; train, eval, generate, merge and serve all load through here).
"""

from __future__ import annotations


import os

from ..errors import UserError, spell
from ..paths import looks_like_local_path
from .precision import PRECISION_DTYPES, PRECISIONS, QUANTIZATIONS


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
    _deepspeed_on_cpu_says_so_once()


def _deepspeed_on_cpu_says_so_once():
    """Where DeepSpeed is installed, accelerate imports it with every Trainer, and on a machine without CUDA it
    warns "Setting accelerator to CPU ..." each time: on such a machine, name the CPU accelerator it would pick
    anyway (DS_ACCELERATOR, DeepSpeed's own override), so that it picks it silently. A user's own value stays."""
    import importlib.util
    import os
    import sys

    if "DS_ACCELERATOR" in os.environ or "deepspeed" in sys.modules or not importlib.util.find_spec("deepspeed"):
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


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


def precision_of(dtype) -> str:
    """The --precision value of a torch dtype (fp32 for anything else)."""
    return next((k for k, (name, _) in PRECISION_DTYPES.items() if str(dtype) == f"torch.{name}"), "fp32")


def torch_dtype(precision: str):
    import torch

    try:
        return getattr(torch, PRECISION_DTYPES[precision][0])
    except KeyError:
        raise UserError(f"--precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}") from None


MODELSCOPE = "modelscope:"


def resolve_source(name: str, what: str = "model") -> str:
    """`modelscope:ORG/NAME` -> its folder in ModelScope's local cache ($MODELSCOPE_CACHE, default
    ~/.cache/modelscope: models/ORG/NAME, or models/ORG--NAME/snapshots/REVISION as modelscope >= 1.38 writes it),
    found by the modelscope package's own snapshot_download with local_files_only: a run never downloads (the
    same rule as for data); a model missing from the cache is one line saying how to fetch it ahead of time.
    Any other name is returned as it is."""
    if not name.startswith(MODELSCOPE):
        return name
    model_id = name[len(MODELSCOPE):]
    if model_id.count("/") != 1 or not all(model_id.split("/")):
        raise UserError(f"--{what} {name}: a ModelScope id is modelscope:ORG/NAME, e.g. modelscope:modelscope/Llama-2-7b-ms")
    try:
        import logging

        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise UserError(f"--{what} {name}: needs the modelscope package: pip install 'llm-tuning[modelscope]'") from None
    logging.getLogger("modelscope_hub").setLevel(logging.WARNING)  # "Found legacy cache at ..., reusing."
    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # modelscope_hub's CacheNotFound (or any failure to read the cache)
        cache = os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope"
        raise UserError(f"--{what} {name}: ModelScope model {model_id} is not in the local ModelScope cache ({cache}; "
                        f"runs never download): fetch it ahead of time with `modelscope download {model_id}` or "
                        f"python -c \"from modelscope import snapshot_download; snapshot_download('{model_id}')\" "
                        "(same MODELSCOPE_CACHE)") from None


# What a tokenizer folder holds (one of these): fast, sentencepiece, BPE / WordPiece vocabularies, the config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                   "tokenizer_config.json")


def check_source(name: str, what: str = "model"):
    """Fail early, before heavy imports, on a local path that is not there (or a ModelScope id not in its cache),
    a folder that lacks what `what` needs, or a hub id when no hub can be reached."""
    name = resolve_source(name, what)
    if looks_like_local_path(name) and not os.path.exists(name):
        raise UserError(f"{name}: no such {what} folder")
    if os.path.isfile(name):
        raise UserError(f"{name}: is a file; expected a {what} folder or a hub id")
    if os.path.isdir(name):
        _check_folder(name, what)
    else:
        from ..hub import check_reachable

        check_reachable(name, f"{what} folder", f"Give a {what} folder (as save_pretrained or init-model write it)")


def _check_folder(name: str, what: str):
    """A model folder needs config.json; a tokenizer one any of TOKENIZER_FILES (named, so the user sees what
    was looked for; the library's own message lists nothing here: "from one of: ")."""
    files = set(os.listdir(name))
    if what == "model" and "config.json" not in files:
        raise UserError(f"{name}: no config.json in this folder, so it is not a model folder (save_pretrained "
                        "and init-model write config.json beside the weights); give the folder that holds it")
    if what == "tokenizer" and not files & set(TOKENIZER_FILES):
        model = " (it has config.json: a model without its tokenizer)" if "config.json" in files else ""
        raise UserError(f"{name}: no tokenizer in this folder{model}; looked for {', '.join(TOKENIZER_FILES)}. "
                        "Copy the model's tokenizer files into it, or (train) pass --tokenizer DIR: a folder or hub "
                        "id with the tokenizer")


def _hub_error(name: str, what: str, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{name}: could not load the {what} ({first})")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    check_source(name, "tokenizer")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_source(name, "tokenizer"), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name, "tokenizer", e) from None


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
    _hint_fp16_on_cpu(precision, quantization)
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization, precision, int8_threshold)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_source(name), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as e:
        raise _hub_error(name, "model", e) from None
    _avoid_bnb_cpu_packing_crash(model)  # also for a folder saved already quantised
    if speedups:
        from .speedups import speed_up

        speed_up(model)
    return model


_HINTED: set = set()


def _hint_fp16_on_cpu(precision: str, quantization: str | None):
    """fp16 weights on a CPU work, but CPUs have no fast fp16 arithmetic: training ran ~4x slower than fp32 on
    the tour's model. The user asked for fp16 to save memory or time; say once which of the two they get."""
    import sys

    import torch

    if precision != "fp16" or quantization or torch.cuda.is_available() or "fp16" in _HINTED:
        return
    _HINTED.add("fp16")
    print(f"[llm-tuning] hint: {spell('precision', 'fp16')} on a CPU halves the weights' memory but runs slower "
          f"than fp32 (CPUs have no fast fp16 arithmetic; ~4x slower in training here); for speed use fp32, or bf16 "
          "on a CPU with bf16 instructions", file=sys.stderr, flush=True)


def _avoid_bnb_cpu_packing_crash(model):
    """bitsandbytes 0.50 repacks 4-bit weights for an AVX512-BF16 CPU kernel on the first no-grad forward. That
    path computes in bf16 whatever the compute dtype (so eval would not match training, which never takes it), and
    it crashes unless out_features % 32 == 0 and in_features is a multiple of 64 (stories260K's MLP is 172 wide).
    Every 4-bit layer keeps the generic path: the same numerics in training, evaluation and merge."""
    for module in model.modules():
        if module.__class__.__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = False
