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
from ..options import did_you_mean, load_yaml
from . import lab, quantlab, run, serve, starter
from .flags import add_options, config_from_args


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: type
    run: Callable  # run(config) -> None, or an exit code of its own (estimate: 3 when the run does not fit)
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
    ap.command_parsers = sub.choices  # name -> the command's parser, for _parse's errors
    return ap


def _parse(argv) -> argparse.Namespace:
    """The arguments; a flag the command does not take is refused with the command's own usage (argparse leaves
    it to the top-level parser, whose usage lists the commands) and the closest flag it does take."""
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in BY_NAME:
        ap.error(f"no command {argv[0]!r}; {did_you_mean(argv[0], BY_NAME)}choose one of {', '.join(BY_NAME)}")
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        sub = ap.command_parsers[args.command]
        flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
        hints = [did_you_mean(u.split("=")[0], flags).rstrip() for u in unknown if u.startswith("-")]
        sub.error(f"unrecognized arguments: {' '.join(unknown)}" + "".join(f"; {h}" for h in hints if h))
    return args


def _config(command: Command, args: argparse.Namespace):
    path = getattr(args, "config_file", None)
    file_values = load_yaml(path) if path else None
    if command.name == "train":  # --resume: the run's own config.yaml under the file's values and the flags
        from ..train.resume import with_run_config

        file_values = with_run_config(_flags(args), file_values)
    return config_from_args(command.config, args, file_values, path or "config")


def _flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("command", "config_file")}


def main(argv=None) -> int:
    args = _parse(argv)
    from ..models.load import quiet_libraries

    quiet_libraries()
    command = BY_NAME[args.command]
    try:
        with on_command_line():
            code = command.run(_config(command, args))
    except UserError as e:
        import os

        if int(os.environ.get("RANK") or 0) == 0:  # under N processes each meets the same bad input: one line
            print(f"llm-tuning {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a command may say how to go on (train: the checkpoint, the command)
        print(f"llm-tuning {args.command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    return code or 0  # a command's own verdict: estimate's 3, "does not fit"


if __name__ == "__main__":
    raise SystemExit(main())
