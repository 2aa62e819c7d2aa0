"""argparse options generated from the config dataclasses (config/): one declaration per option."""

from __future__ import annotations

import argparse
import dataclasses

from ..options import base_type, build_config, parse_bool, range_text


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def show_default(f: dataclasses.Field) -> str:
    """The default as a user would type it, or '' where the help text says what happens without the flag."""
    if f.metadata.get("required"):
        return "required"
    d = f.default
    if d is None or d is dataclasses.MISSING or d == "":
        return ""
    if isinstance(d, bool):
        return "true" if d else "false"
    return str(d)


def help_text(f: dataclasses.Field) -> str:
    shown, valid = show_default(f), range_text(f)
    notes = ["required" if shown == "required" else f"default: {shown}" if shown else "",
             f"range: {valid}" if valid else ""]
    notes = "; ".join(n for n in notes if n)
    return f"{f.metadata['help']}" + (f" ({notes})" if notes else "")


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """One flag per field of `cls`, grouped as declared. Flags not given stay absent (argument_default=SUPPRESS
    on the parser), so a YAML file's values are only overridden by flags the user typed."""
    groups: dict = {}
    for f in cli_fields(cls):
        group = f.metadata.get("group", "general")
        target = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        kwargs = {"help": help_text(f), "dest": f.name}
        typ, choices = base_type(f), f.metadata.get("choices")
        if typ is bool:
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typ in (int, float) and f.metadata.get("words"):
            kwargs["type"] = str  # a word ("auto") or a number: config.coerce reads it
            kwargs["metavar"] = "{" + ",".join(["N", *f.metadata["words"]]) + "}"
        elif typ in (int, float):
            kwargs["type"] = typ
        elif typ is list:
            kwargs["action"] = "append"  # --x a,b or --x a --x b (config.coerce joins the pieces)
        if choices:
            kwargs["metavar"] = "{" + ",".join(choices) + "}"
        target.add_argument(flag_name(f.name), **kwargs)
    return parser


def config_from_args(cls, args: argparse.Namespace, file_values: dict | None = None, config_path: str = "config"):
    """The config dataclass from the flags given (and a YAML file's values under them)."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config_file")}
    return build_config(cls, file_values, flags, config_path)
