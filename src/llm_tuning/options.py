"""How an option is declared (`option`, `same_as`) and how values are read (flags, YAML) and checked.

The ground the config classes (config/) and the methods' own options (methods/) stand on: it imports nothing of
the project but errors, so any layer may declare options."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import MISSING, field

from .errors import UserError


def option(default, help: str, *, choices=None, group: str = "general", required: bool = False, cli: bool = True,
           range: str | None = None, also: tuple = (), hints: dict | None = None, words: dict | None = None):
    """A dataclass field carrying its command-line help. cli=False: settable from YAML / Python only.

    range: a numeric option's valid values as an interval, "[1, inf)", "(0, 1]", ... (square bracket: the bound
    is allowed; round: it is not); also: values allowed outside it (-1 where it means "not set"). Flags, YAML
    and Python construction all refuse a value outside before any work (`check_range`), and --help and the
    docs show it (`range_text`). hints: {a value users type that is not a choice: what they mean}, said in
    the refusal ("qlora" -> "--method lora --quantization 4bit"). words: {a word a numeric option takes: the
    Word it stands for} ("auto" -> AUTO for --batch-size); the Word's number typed as a number (`--batch-size 0`)
    is range-checked like any other."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "group": group, "required": required,
            "cli": cli, "range": parse_range(range) if range else None, "also": tuple(also), "hints": hints or {},
            "words": words or {}}
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


class Word(int):
    """What a word a numeric option takes stands for (AUTO, `--batch-size auto`): equal to its number for the code
    that reads the option (`batch_size == 0`), but never out of range, while that number typed as a number is
    checked like any other (`--batch-size 0` is refused). Shown, copied and written back as the word."""

    def __new__(cls, value: int, word: str):
        self = super().__new__(cls, value)
        self.word = word
        return self

    def __reduce__(self):  # copies (dataclasses.replace, asdict) and pickles keep the word
        return Word, (int(self), self.word)

    def __repr__(self) -> str:
        return self.word


AUTO = Word(0, "auto")  # `--batch-size auto`, `--checkpoint-every auto`: sized by the memory estimate


def plain(value):
    """A value as YAML and JSON write it: a Word as its word."""
    return value.word if isinstance(value, Word) else value


# ---------------------------------------------------------------- ranges


def parse_range(spec: str) -> tuple:
    """"[1, inf)" -> (1, True, inf, False): (low, low allowed, high, high allowed). A bad spec fails at import."""
    spec = spec.strip()
    low, high = (x.strip() for x in spec[1:-1].split(","))
    assert spec[0] in "[(" and spec[-1] in ")]", spec
    return float(low), spec[0] == "[", float(high), spec[-1] == "]"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def range_text(f: dataclasses.Field) -> str:
    """The range as a user reads it: ">= 1", "> 0", "0 to 1", ">= 0 and < 1", "-1, or >= 1"; "" if none."""
    r = f.metadata.get("range")
    if not r:
        return ""
    low, low_in, high, high_in = r
    if low_in and high_in and math.isfinite(low) and math.isfinite(high):
        text = f"{_num(low)} to {_num(high)}"
    else:
        parts = []
        if math.isfinite(low):
            parts.append(f"{'>=' if low_in else '>'} {_num(low)}")
        if math.isfinite(high):
            parts.append(f"{'<=' if high_in else '<'} {_num(high)}")
        text = " and ".join(parts)
    also = [*(f.metadata.get("words") or ()), *(_num(a) for a in f.metadata.get("also") or ())]
    return ", ".join(also) + ", or " + text if also else text


def in_range(f: dataclasses.Field, value) -> bool:
    r = f.metadata.get("range")
    if not r or value is None or isinstance(value, (bool, Word)) or value in (f.metadata.get("also") or ()):
        return True
    low, low_in, high, high_in = r
    return (low <= value if low_in else low < value) and (value <= high if high_in else value < high)


def check_range(f: dataclasses.Field, value, spelled: str):
    """A UserError naming the option as the user spelled it (`--max-length -5`, `train.yaml: max_length -5`,
    `TrainConfig(max_length=-5)`) when `value` is outside the declared range (NaN included)."""
    if isinstance(value, float) and math.isnan(value) or not in_range(f, value):
        raise UserError(f"{spelled}: out of range (must be {range_text(f)})")


def check_ranges(obj, cls_name: str | None = None):
    """Every field of a config dataclass instance against its range (a declared word read as its value first); for
    Python callers (__post_init__), so a value refused on the command line is refused from Python too, with the
    Python spelling."""
    name = cls_name or type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        words = f.metadata.get("words") or {}
        if isinstance(value, str) and value.strip().lower() in words:  # TrainConfig(batch_size="auto")
            value = words[value.strip().lower()]
            object.__setattr__(obj, f.name, value)
        if f.metadata.get("range") and isinstance(value, (int, float)):
            check_range(f, value, f"{name}({f.name}={value!r})")


def declared(cls, name: str):
    """The default of option `name` as dataclass `cls` declares it: a library type that mirrors some options (a
    typed slice such as infer.sampling.Sampling) takes its defaults from here instead of repeating them."""
    return cls.__dataclass_fields__[name].default


# ---------------------------------------------------------------- reading values


def did_you_mean(word, known, spell=str) -> str:
    """"did you mean 'lora'? " when `word` is close to one of `known` (difflib's ratio, its default cutoff), else
    "". spell: how a candidate is written back to the user (a flag's dashes)."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"did you mean {spell(close[0])!r}? " if close else ""


def unknown_option(key, known, source: str | None = None) -> UserError:
    """The refusal of a YAML key (source: the file) or an option name no config declares, with the closest known
    one; dashes and underscores are the same to the YAML files."""
    hint = did_you_mean(str(key).replace("-", "_"), known).rstrip()
    return UserError(f"{source + ': ' if source else ''}unknown option {key!r}" + (f"; {hint}" if hint else ""))


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
    words = f.metadata.get("words") or {}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]  # the word's value, which a number typed in its place never is
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
        expected = " or ".join([getattr(typ, "__name__", str(f.type)), *words])
        if source == "flag":
            raise UserError(f"{flag} {value!r}: not a valid value (expected {expected})") from None
        raise UserError(f"{source}: {f.name!r} has a bad value {value!r} (expected {expected})") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        hint = (f.metadata.get("hints") or {}).get(value)
        raise UserError(f"{flag} {value!r} is unknown; " + (f"{hint} (the choices: {', '.join(choices)})" if hint
                                                           else did_you_mean(value, choices)
                                                           + f"choose one of {', '.join(choices)}"))
    if isinstance(value, (int, float)):
        check_range(f, value, f"{flag} {value}" if source == "flag" else f"{source}: {f.name} {value}")
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


def build_config(cls, file_values: dict | None, flag_values: dict, config_path: str = "config"):
    """A `cls` (a command's config dataclass): defaults, overridden by the YAML file, overridden by flags given on
    the command line."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    merged: dict = {}
    for source, values in ((config_path, file_values or {}), ("flag", flag_values)):
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in fields:
                raise unknown_option(key, fields, config_path if source != "flag" else None)
            merged[k] = coerce(fields[k], value, config_path if source != "flag" else "flag")
    cfg = cls(**merged)
    for name, f in fields.items():
        if f.metadata.get("required") and getattr(cfg, name) in (None, ""):
            raise UserError(f"--{name.replace('_', '-')} is required"
                            + (" (on the command line or in --config)" if cls.__name__ == "TrainConfig" else ""))
    return cfg
