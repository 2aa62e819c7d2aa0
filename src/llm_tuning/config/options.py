"""How an option is declared (`option`, `same_as`) and how values are read (flags, YAML) and checked."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import MISSING, field

from ..errors import UserError

# The one precision table: option value -> (torch dtype name, bytes per element).
PRECISION_DTYPES = {"fp32": ("float32", 4), "bf16": ("bfloat16", 2), "fp16": ("float16", 2)}
PRECISIONS = tuple(PRECISION_DTYPES)
QUANTIZATIONS = ("8bit", "4bit")
TEMPLATE_NAMES = ("default", "llama2", "auto")  # data/templates.py renders each


def option(default, help: str, *, choices=None, group: str = "general", required: bool = False, cli: bool = True):
    """A dataclass field carrying its command-line help. cli=False: settable from YAML / Python only."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "group": group, "required": required,
            "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def same_as(cls, name: str, default=MISSING, required: bool | None = None):
    """Borrow option `name` of dataclass `cls` (its help, choices, group), optionally with another default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = dict(f.metadata)
    if required is not None:
        meta["required"] = required
    value = f.default if default is MISSING else default
    return field(default=value, metadata=meta)


# ---------------------------------------------------------------- reading values


def parse_bool(value) -> bool:
    """true/yes/1/on or false/no/0/off: one reading for command-line flags and YAML values alike."""
    v = str(value).lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def base_type(f: dataclasses.Field) -> type:
    """int for `int | None`, list for `list[str] | None`, ... (annotations are strings under `from __future__`)."""
    t = f.type if not isinstance(f.type, str) else f.type.replace(" ", "")
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("list", list), ("dict", dict), ("str", str)):
        if (t if isinstance(t, str) else getattr(t, "__name__", "")).startswith(name):
            return typ
    if typing.get_origin(t) is not None:
        return typing.get_origin(t)
    return str


def coerce(f: dataclasses.Field, value, source: str):
    """A YAML or flag value as the field's type, its choices checked; a UserError naming `source` otherwise."""
    typ = base_type(f)
    flag = "--" + f.name.replace("_", "-")
    if value is None:
        return None
    try:
        if typ is list and isinstance(value, str):
            value = [m.strip() for m in value.split(",") if m.strip()]
        elif typ is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [m.strip() for v in value for m in v.split(",") if m.strip()]  # a repeated flag's pieces
        elif typ is bool and not isinstance(value, bool):
            value = parse_bool(value)
        elif typ is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif typ is float and not isinstance(value, bool):
            value = float(value)
        elif typ is str and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{source}: {f.name!r} has a bad value {value!r} (expected {f.type})") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{flag} {value!r} is unknown; choose one of {', '.join(choices)}")
    return value


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return data


def build_config(file_values: dict | None, flag_values: dict, config_path: str = "config", cls=None):
    """Defaults, overridden by the YAML file, overridden by flags given on the command line (cls: TrainConfig
    unless another command's config dataclass is given)."""
    if cls is None:
        from .train import TrainConfig as cls
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    merged: dict = {}
    for source, values in ((config_path, file_values or {}), ("flag", flag_values)):
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in fields:
                raise UserError(f"{config_path}: unknown option {key!r}" if source != "flag" else f"unknown option {key!r}")
            merged[k] = coerce(fields[k], value, config_path if source != "flag" else "flag")
    cfg = cls(**merged)
    for name, f in fields.items():
        if f.metadata.get("required") and getattr(cfg, name) in (None, ""):
            raise UserError(f"--{name.replace('_', '-')} is required"
                            + (" (on the command line or in --config)" if cls.__name__ == "TrainConfig" else ""))
    return cfg
