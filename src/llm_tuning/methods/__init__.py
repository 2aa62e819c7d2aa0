"""Methods, one file each: every fact about a method lives in its file (base.py says which); this registry is
the one list of them. A new method is a new file and one line in MODULES."""

from __future__ import annotations

import importlib
import json
import os

from ..errors import UserError
from ..options import did_you_mean
from .base import Footprint, Method, PeftMethod

# The method files, in the order the command line, the docs and a comparison list them. Each defines METHODS,
# the Method instances it registers.
MODULES = ("full", "bitfit", "prompt", "ptuning", "prefix", "lora", "lora_variants", "ia3", "vera", "oft",
           "ln_tuning")
METHODS: dict[str, Method] = {}
for _module in MODULES:
    for _method in importlib.import_module(f".{_module}", __name__).METHODS:
        METHODS[_method.name] = _method
# Every variant of every method, by name: the TrainConfig options that select it (all else at its defaults).
# benchmarks/methods_at_defaults.py and tests/test_defaults_learn.py train each of them.
VARIANTS = {name: dict(method=m.name, **opts) for m in METHODS.values() for name, opts in m.named_variants().items()}
RUN_INFO = "llm_tuning.json"  # written beside every adapter: which method, which base, the resolved config

__all__ = ["Footprint", "Method", "PeftMethod", "METHODS", "VARIANTS", "RUN_INFO", "check_quantizable", "get_method",
           "method_of_adapter", "option_fields", "quantizable_methods"]


def option_fields() -> list[tuple]:
    """(name, type, field) of every method's own options, each declared by exactly one method (a variant class
    inherits its parent's declarations: the same objects)."""
    out, owner = [], {}
    for m in METHODS.values():
        for name, typ, fld in m.options:
            if name in owner and owner[name][1] is not fld:
                raise AssertionError(f"option {name} is declared by both {owner[name][0]} and {m.name}")
            if name not in owner:
                owner[name] = (m.name, fld)
                out.append((name, typ, fld))
    return out


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"--method {name!r} is unknown; {did_you_mean(name, METHODS)}choose one of "
                        f"{', '.join(METHODS)}") from None


def quantizable_methods() -> list[str]:
    """The methods that can train on an 8-bit or 4-bit base (each says so: Method.trains_on_quantized)."""
    return [m.name for m in METHODS.values() if m.trains_on_quantized]


def check_quantizable(method_name: str, quantization: str | None):
    """A UserError when `method_name` cannot train on a `quantization` base, naming every method that can: the one
    check for training and the memory estimate alike."""
    if quantization and not get_method(method_name).trains_on_quantized:
        raise UserError(f"--method {method_name} cannot train on a --quantization {quantization} base (it needs the "
                        f"base's full-precision weights); use one of {', '.join(quantizable_methods())} (lora on a "
                        "quantised base is QLoRA), or drop --quantization")


def method_of_adapter(adapter_dir: str) -> str:
    """Which method wrote `adapter_dir` (ours, or a plain PEFT adapter folder: the first method of its type)."""
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
        match = next((m.name for m in METHODS.values() if getattr(m, "peft_type", None) == peft_type), None)
        if match:
            return match
        raise UserError(f"{adapter_dir}: PEFT type {peft_type} is not supported")
    raise UserError(f"{adapter_dir}: not an adapter folder (no {RUN_INFO} or adapter_config.json)")
