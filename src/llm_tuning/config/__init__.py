"""Every option, declared once: a dataclass field with its type, default, choices and one line of help.

The command line (cli/flags.py), the YAML checks (options.build_config) and the options tables in the docs
(docs/options.md, the README's method table; cli/docs.py) are all generated from these declarations. An option
that several commands take (--model, --precision, ...) is declared once, in TrainConfig or wherever it belongs,
and the other commands borrow the declaration with `same_as`, so its help text exists in one place.

Values are layered: defaults < YAML file (`--config`, train only) < flags given on the command line.

How an option is declared and read is llm_tuning.options (below every layer); TrainConfig is assembled from the
methods' own options (methods/ imports options, never config).
"""

from .commands import (ChatConfig, CompareCommand, CompareConfig, DemoConfig, EstimateConfig, EvalConfig,
                       GenerateConfig, InitModelConfig, LoadConfig, MergeConfig, QuantlabConfig, ServeConfig)
from .train import FIELDS, TrainConfig, TrainSettings

__all__ = ["FIELDS", "TrainConfig", "TrainSettings", "ChatConfig", "CompareCommand", "CompareConfig", "DemoConfig",
           "EstimateConfig", "EvalConfig", "GenerateConfig", "InitModelConfig", "LoadConfig", "MergeConfig",
           "QuantlabConfig", "ServeConfig"]
