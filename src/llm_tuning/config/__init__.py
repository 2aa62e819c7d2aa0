"""Every option, declared once: a dataclass field with its type, default, choices and one line of help.

The command line (cli/flags.py), the YAML checks (build_config below) and the options tables in the docs
(docs/options.md, the README's method table; cli/docs.py) are all generated from these declarations. An option
that several commands take (--model, --precision, ...) is declared once, in TrainConfig or wherever it belongs,
and the other commands borrow the declaration with `same_as`, so its help text exists in one place.

Values are layered: defaults < YAML file (`--config`, train only) < flags given on the command line.
"""

from .commands import (ChatConfig, CompareCommand, CompareConfig, DemoConfig, EstimateConfig, EvalConfig,
                       GenerateConfig, InitModelConfig, LoadConfig, MergeConfig, QuantlabConfig, ServeConfig)
from .options import (METHOD_NAMES, PRECISIONS, QUANTIZATIONS, TEMPLATE_NAMES, base_type, build_config, coerce,
                      load_yaml, option, parse_bool, same_as)
from .train import FIELDS, TrainConfig

__all__ = ["ChatConfig", "CompareCommand", "CompareConfig", "DemoConfig", "EstimateConfig", "EvalConfig",
           "GenerateConfig", "InitModelConfig", "LoadConfig", "MergeConfig", "QuantlabConfig", "ServeConfig",
           "METHOD_NAMES", "PRECISIONS", "QUANTIZATIONS", "TEMPLATE_NAMES", "base_type", "build_config", "coerce",
           "load_yaml", "option", "parse_bool", "same_as", "FIELDS", "TrainConfig"]
