"""Every option, declared once: a dataclass field with its type, default, choices and one line of help.

The command line (cli/flags.py), the YAML checks (build_config below) and the options tables in the docs
(docs/options.md, the README's method table; cli/docs.py) are all generated from these declarations. An option
that several commands take (--model, --precision, ...) is declared once, in TrainConfig or wherever it belongs,
and the other commands borrow the declaration with `same_as`, so its help text exists in one place.

Values are layered: defaults < YAML file (`--config`, train only) < flags given on the command line.
"""

from .options import (PRECISION_DTYPES, PRECISIONS, QUANTIZATIONS, TEMPLATE_NAMES, base_type, build_config, coerce,
                      load_yaml, option, parse_bool, same_as)

# TrainConfig takes the methods' own options (methods/), and a method file reads `option` from options.py: the
# config classes load on first use, so that importing a method first does not run into a half-made registry.
_TRAIN = ("FIELDS", "TrainConfig", "TrainSettings")
_COMMANDS = ("ChatConfig", "CompareCommand", "CompareConfig", "DemoConfig", "EstimateConfig", "EvalConfig",
             "GenerateConfig", "InitModelConfig", "LoadConfig", "MergeConfig", "QuantlabConfig", "ServeConfig",
             "SamplingConfig")

__all__ = [*_TRAIN, *_COMMANDS, "PRECISION_DTYPES", "PRECISIONS", "QUANTIZATIONS", "TEMPLATE_NAMES", "base_type",
           "build_config", "coerce", "load_yaml", "option", "parse_bool", "same_as"]


def __getattr__(name):
    import importlib

    if name in _TRAIN or name in _COMMANDS:
        return getattr(importlib.import_module(f".{'train' if name in _TRAIN else 'commands'}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
