"""Options are declared once (config/, through llm_tuning.options): the flags, YAML checks and docs tables all
come from the declarations."""

import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from llm_tuning.cli import COMMANDS, build_parser
from llm_tuning.cli.flags import cli_fields
from llm_tuning.config import FIELDS, CompareConfig, TrainConfig


def _flags(parser, command):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions if a.option_strings and a.dest not in ("help", "config_file")}


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_field_is_a_flag_and_every_flag_a_field(command):
    cmd = next(c for c in COMMANDS if c.name == command)
    assert _flags(build_parser(), command) == {f.name for f in cli_fields(cmd.config)}


def test_train_takes_every_train_config_field():
    settable = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
    assert _flags(build_parser(), "train") == settable == set(FIELDS)


def test_each_help_text_is_written_once_in_the_code():
    """A borrowed option (same_as) shares its declaration's help; no help string is typed twice anywhere in the
    source (the generated docs tables are the only other copies, and test_docs_are_current keeps them equal)."""
    helps = {f.metadata["help"] for c in COMMANDS for f in cli_fields(c.config)}
    helps |= {f.metadata["help"] for f in cli_fields(CompareConfig)}
    code = ""
    for top in ("src", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        code += f.read()
    for text in helps:
        # the help may be split over string literals; its first 30 characters open one literal
        assert code.count('"' + text[:30]) == 1, text


def test_docs_are_current():
    r = subprocess.run([sys.executable, "-m", "llm_tuning.cli.docs", "--check"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_estimate_takes_every_train_option_that_changes_memory():
    """Method options and the run's shape: whatever train takes of these, estimate takes too."""
    memory_groups = ("method", "prompt / p-tuning / prefix", "lora")
    wanted = {f.name for f in cli_fields(TrainConfig) if f.metadata["group"] in memory_groups}
    wanted -= {"prompt_init", "prompt_text", "lora_alpha"}  # values, not shapes: no memory changes with them
    wanted |= {"precision", "quantization", "batch_size", "max_length", "gradient_checkpointing", "fast_loss"}
    assert wanted <= _flags(build_parser(), "estimate")


@pytest.mark.parametrize("args, expected", [
    (["--precision", "fp8"], "--precision 'fp8' is unknown; choose one of fp32, bf16, fp16"),
    (["--batch-size", "four"], "--batch-size 'four': not a valid value (expected int or auto)"),
    (["--prefix-projection", "maybe"], "expected true/false, got 'maybe'"),
])
def test_bad_estimate_flags_one_line(args, expected):
    r = run_cli("estimate", "--model", "llama-2-7b", *args)
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr


def test_yaml_values_are_checked_like_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: d\noutput_dir: o\nencoder: gru\n", encoding="utf-8")
    r = run_cli("train", "--config", str(cfg))
    assert r.returncode == 2 and "--encoder 'gru' is unknown; choose one of mlp, lstm" in r.stderr
    cfg.write_text("model: m\ndata: d\noutput_dir: o\nlora_r: 2.5\n", encoding="utf-8")
    r = run_cli("train", "--config", str(cfg))
    assert r.returncode == 2 and "'lora_r' has a bad value 2.5" in r.stderr and str(cfg) in r.stderr
