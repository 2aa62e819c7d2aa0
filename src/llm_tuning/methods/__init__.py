"""Methods, one file each, behind the interface in base.py."""

from __future__ import annotations

import json
import os

from ..errors import UserError
from .bitfit import BitFit
from .full import Full
from .ia3 import IA3
from .lora import LoRA
from .prefix import PrefixTuning
from .prompt import PromptTuning
from .ptuning import PTuning

METHODS = {m.name: m for m in (Full(), BitFit(), PromptTuning(), PTuning(), PrefixTuning(), LoRA(), IA3())}
# Every variant of every method, by name: the TrainConfig options that select it (all else at its defaults).
# benchmarks/methods_at_defaults.py and tests/test_defaults_learn.py train each of them.
VARIANTS = {
    "bitfit": dict(method="bitfit"),
    "prompt-text": dict(method="prompt", prompt_init="text"),
    "prompt-random": dict(method="prompt", prompt_init="random"),
    "ptuning-mlp": dict(method="ptuning", encoder="mlp"),
    "ptuning-lstm": dict(method="ptuning", encoder="lstm"),
    "prefix": dict(method="prefix", prefix_projection=False),
    "prefix-proj": dict(method="prefix", prefix_projection=True),
    "lora": dict(method="lora"),
    "ia3": dict(method="ia3"),
    "full": dict(method="full"),
}
RUN_INFO = "llm_tuning.json"  # written beside every adapter: which method, which base, the resolved config

_PEFT_TYPES = {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt", "P_TUNING": "ptuning", "PREFIX_TUNING": "prefix"}


def get_method(name: str):
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"--method {name!r} is unknown; choose one of {', '.join(METHODS)}") from None


def method_of_adapter(adapter_dir: str) -> str:
    """Which method wrote `adapter_dir` (ours, or a plain PEFT adapter folder)."""
    if not os.path.isdir(adapter_dir):
        raise UserError(f"{adapter_dir}: no such adapter folder")
    info = os.path.join(adapter_dir, RUN_INFO)
    if os.path.exists(info):
        with open(info) as f:
            return json.load(f)["method"]
    peft_cfg = os.path.join(adapter_dir, "adapter_config.json")
    if os.path.exists(peft_cfg):
        with open(peft_cfg) as f:
            peft_type = json.load(f).get("peft_type")
        if peft_type in _PEFT_TYPES:
            return _PEFT_TYPES[peft_type]
        raise UserError(f"{adapter_dir}: PEFT type {peft_type} is not supported")
    raise UserError(f"{adapter_dir}: not an adapter folder (no {RUN_INFO} or adapter_config.json)")
