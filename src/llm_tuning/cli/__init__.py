"""The `llm-tuning` command: a thin layer over the Python API.

Each command is a config dataclass (config/: its options, declared once) and a function that calls the API
with it. Nothing heavy is imported at module level, so `--help` and input errors answer at once. A UserError
becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..config import (ChatConfig, CompareCommand, DemoConfig, EstimateConfig, EvalConfig, GenerateConfig,
                      InitModelConfig, MergeConfig, QuantlabConfig, ServeConfig, TrainConfig)
from ..errors import UserError, on_command_line
from ..options import load_yaml
from . import lab, quantlab, run, serve, starter
from .flags import add_options, config_from_args


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: type
    run: Callable  # run(config) -> None
    yaml: bool = False  # takes --config FILE.yaml with the same option names


COMMANDS = [
    Command("demo", "the embedded default: tiny model + bundled Chinese sample, LoRA, merge, generate", DemoConfig,
            starter.demo),
    Command("init-model", "build a tiny random Bloom or Llama with a tokenizer", InitModelConfig, starter.init_model),
    Command("train", "fine-tune a model with one method", TrainConfig, run.train, yaml=True),
    Command("merge", "fold a LoRA / IA3 / BitFit adapter into its base model", MergeConfig, run.merge),
    Command("generate", "answer an instruction", GenerateConfig, run.generate),
    Command("eval", "held-out response loss and perplexity (--generate: ROUGE / BLEU; --tasks: lm-eval's "
            "benchmarks)", EvalConfig, run.evaluate),
    Command("estimate", "predict peak training memory from a model config (no weights needed)", EstimateConfig,
            lab.estimate),
    Command("compare", "run several methods on one budget and write a report (table + plots)", CompareCommand,
            lab.compare),
    Command("quantlab", "measure int8 / LLM.int8 / NF4 / FP4 errors on a model and its data (report + plots)",
            QuantlabConfig, quantlab.run),
    Command("chat", "talk to a model (and adapter) in the terminal, answers streamed", ChatConfig, serve.chat),
    Command("serve", "OpenAI-compatible API over a base and many adapters, web playground at /", ServeConfig,
            serve.serve),
]
BY_NAME = {c.name: c for c in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-tuning", description="Parameter-efficient fine-tuning of causal LMs.")
    sub = ap.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=(c.config.__doc__ or c.help).strip(),
                           argument_default=argparse.SUPPRESS)
        if c.yaml:
            p.add_argument("--config", dest="config_file", help="YAML file with any of the options below (same "
                           "names, dashes or underscores); flags override the file")
        add_options(p, c.config)
    return ap


def _config(command: Command, args: argparse.Namespace):
    path = getattr(args, "config_file", None)
    file_values = load_yaml(path) if path else None
    return config_from_args(command.config, args, file_values, path or "config")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..models.load import quiet_libraries

    quiet_libraries()
    command = BY_NAME[args.command]
    try:
        with on_command_line():
            command.run(_config(command, args))
    except UserError as e:
        import os

        if int(os.environ.get("RANK") or 0) == 0:  # under N processes each meets the same bad input: one line
            print(f"llm-tuning {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm-tuning {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
