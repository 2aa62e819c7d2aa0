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


def test_help_and_docs_describe_each_command_in_prose():
    """The description is the command's own sentence, never the dataclass's generated signature."""
    from llm_tuning.cli.docs import options_markdown

    for c in COMMANDS:
        assert not (c.config.__doc__ or "").startswith(c.config.__name__ + "("), c.name
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "TrainConfig(" not in r.stdout and "`llm-tuning train`: fine-tune" in r.stdout
    assert "Config(" not in options_markdown()


def _error(argv, capsys) -> str:
    """The stderr of a command refused with exit code 2 (by argparse or by a UserError)."""
    from llm_tuning.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    return capsys.readouterr().err


TRAIN = ["train", "--model", "m", "--data", "d", "--output-dir", "o"]


@pytest.mark.parametrize("argv, expected", [
    (TRAIN + ["--method", "lroa"], "--method 'lroa' is unknown; did you mean 'lora'? choose one of full,"),
    (["estimate", "--model", "llama-2-7b", "--precision", "bf61"], "did you mean 'bf16'?"),
    (TRAIN + ["--lora-rank", "8"], "unrecognized arguments: --lora-rank 8; did you mean '--lora-r'?"),
    (["eval", "--model", "m", "--adaptor", "a"], "did you mean '--adapter'?"),
    (["trian", "--model", "m"], "no command 'trian'; did you mean 'train'?"),
])
def test_did_you_mean_for_a_choice_a_flag_and_a_command(argv, expected, capsys):
    assert expected in _error(argv, capsys)


def test_did_you_mean_for_a_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: d\noutput_dir: o\nlora-rank: 8\n", encoding="utf-8")
    assert f"{cfg}: unknown option 'lora-rank'; did you mean 'lora_r'?" in _error(["train", "--config", str(cfg)],
                                                                                  capsys)
    cmp = tmp_path / "cmp.yaml"
    cmp.write_text("model: m\ndata: d\noutput_dir: o\nmax_steps: 2\nrun:\n- {name: a, method: lora}\n")
    assert "unknown option 'run'; did you mean 'runs'?" in _error(["compare", "--config", str(cmp)], capsys)


def test_a_misspelt_flag_prints_the_commands_own_usage(capsys):
    err = _error(["train", "--model", "m", "--max-step", "3", "--lora-rank", "8"], capsys)
    assert err.startswith("usage: llm-tuning train ") and "[--lora-r LORA_R]" in err
    assert err.strip().endswith("llm-tuning train: error: unrecognized arguments: --lora-rank 8; did you mean "
                                "'--lora-r'?")
    assert "{demo,init-model,train" not in err  # not the top-level usage, which lists the commands


def test_a_learning_rate_far_from_the_methods_default_is_warned_before_any_work(tmp_path, capsys):
    """3e4 for 3e-4: a line at once (before the model is even looked for), --quiet or not; a rate inside what a
    comparison sweeps around the default (x27 either way) says nothing."""
    from llm_tuning.cli import main
    from llm_tuning.methods import METHODS

    lora = METHODS["lora"]
    for lr, warned in ((3e4, True), (lora.default_lr * 27, False), (lora.default_lr / 27, False),
                       (lora.default_lr / 31, True)):
        argv = ["train", "--model", str(tmp_path / "no-model"), "--data", os.path.join(ROOT, "src", "llm_tuning",
                "data", "samples", "zh_sample.json"), "--output-dir", str(tmp_path / "o"), "--lr", f"{lr:g}",
                "--quiet"]
        assert main(argv) == 2  # the missing model, after the warning
        out = capsys.readouterr().out
        assert (f"warning: --lr {lr:g} is " in out) == warned, out
    assert "--lr 30000 is 3e+07 times lora's default 0.001" in lora.lr_warning(3e4)
