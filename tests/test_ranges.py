"""Every numeric option declares its valid range (config/), and a value outside it is refused before any work:
from a flag, a YAML key and a Python TrainConfig alike, in one line, exit code 2, nothing written.

The cases are generated from the declarations, so a new option is covered (or, without a range, fails
test_every_numeric_option_declares_a_range) without touching this file. In-process through cli.main: the
check comes before anything heavy is imported, so ~150 cases take about a second."""

import dataclasses
import math
import os

import pytest
import yaml

from conftest import run_cli
from llm_tuning.cli import COMMANDS, main
from llm_tuning.cli.flags import cli_fields, flag_name
from llm_tuning.config import CompareConfig, TrainConfig
from llm_tuning.errors import UserError
from llm_tuning.options import base_type, range_text

NUMERIC = (int, float)
# a value for each required option, so that only the out-of-range value can stop the command
REQUIRED = {"model": "m", "data": "d.json", "output_dir": "out", "output": "out", "adapter": "a", "prompt": "hi",
            "arch": "llama", "config": "c.yaml"}


def _numeric(cls):
    return [f for f in cli_fields(cls) if base_type(f) in NUMERIC]


def outside(f) -> list:
    """Values just outside the declared range on each finite side (and far outside), never an allowed one."""
    low, low_in, high, high_in = f.metadata["range"]
    step = 1 if base_type(f) is int else 0.5
    values = []
    if math.isfinite(low):
        values += [low - step if low_in else low, low - 1000]
    if math.isfinite(high):
        values += [high + step if high_in else high, high + 1000]
    also = f.metadata.get("also") or ()
    return [int(v) if base_type(f) is int else float(v) for v in values if v not in also]


def _cases():
    for c in COMMANDS:
        for f in _numeric(c.config):
            for v in outside(f):
                yield pytest.param(c, f, v, id=f"{c.name}{flag_name(f.name)}={v}")


def test_every_numeric_option_declares_a_range():
    missing = [f"{c.name} {flag_name(f.name)}" for c in COMMANDS for f in _numeric(c.config)
               if not f.metadata.get("range")]
    missing += [f"compare YAML {f.name}" for f in _numeric(CompareConfig) if not f.metadata.get("range")]
    assert not missing


def _snapshot(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, files in os.walk(folder) for n in files)


def _refused(argv, tmp_path, capsys, monkeypatch, expect: str):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "out of range (must be" in err[0], err
    assert _snapshot(tmp_path) == before  # nothing written


@pytest.mark.parametrize("command,f,value", list(_cases()))
def test_out_of_range_flag_is_refused(command, f, value, tmp_path, capsys, monkeypatch):
    argv = [command.name]
    for g in cli_fields(command.config):
        if g.metadata.get("required") and g.name != f.name:
            argv += [flag_name(g.name), REQUIRED[g.name]]
    _refused(argv + [flag_name(f.name), str(value)], tmp_path, capsys, monkeypatch,
             f"llm-tuning {command.name}: error: {flag_name(f.name)} {value}: out of range")


@pytest.mark.parametrize("f", [f for f in _numeric(TrainConfig)], ids=lambda f: f.name)
def test_out_of_range_train_yaml_key_and_python_value_are_refused(f, tmp_path, capsys, monkeypatch):
    for value in outside(f):
        (tmp_path / "train.yaml").write_text(yaml.safe_dump({"model": "m", "data": "d.json", "output_dir": "out",
                                                             f.name: value}))
        _refused(["train", "--config", "train.yaml"], tmp_path, capsys, monkeypatch,
                 f"train.yaml: {f.name} {value}: out of range")
        with pytest.raises(UserError, match=rf"^TrainConfig\({f.name}={value}\): out of range \(must be "):
            TrainConfig(**{f.name: value})


@pytest.mark.parametrize("f", _numeric(CompareConfig), ids=lambda f: f.name)
def test_out_of_range_compare_yaml_key_is_refused(f, tmp_path, capsys, monkeypatch):
    for value in outside(f):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": "m", "data": "d.json", "output_dir": "out",
                                                         "max_steps": 2, "runs": [{"name": "a", "method": "lora"}],
                                                         f.name: value}))
        _refused(["compare", "--config", "c.yaml"], tmp_path, capsys, monkeypatch, f"c.yaml: {f.name} {value}")


def test_help_and_docs_show_the_range():
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == "max_length")
    assert range_text(f) == ">= 1"
    r = run_cli("train", "--help")
    assert "range: >= 1" in " ".join(r.stdout.split())
    from llm_tuning.cli.docs import options_markdown

    assert "| `--lora-dropout` | 0.05 | >= 0 and < 1 |" in options_markdown()
    assert "| `--max-steps` | -1 | -1, or >= 1 |" in options_markdown()


def test_max_length_negative_or_zero_is_refused_before_tokenising(tmp_path):
    """The issue's case: -5 used to cut 5 tokens (eos included) off every example and exit 0."""
    from conftest import SAMPLE

    for value in ("-5", "0"):
        r = run_cli("train", "--model", str(tmp_path / "no-model"), "--data", SAMPLE, "--output-dir",
                    str(tmp_path / "out"), "--max-length", value)
        assert r.returncode == 2 and r.stderr == \
            f"llm-tuning train: error: --max-length {value}: out of range (must be >= 1)\n"
        assert not (tmp_path / "out").exists()


def test_batch_size_zero_is_out_of_range_and_auto_is_a_word(tmp_path, capsys, monkeypatch):
    """0 is what auto stands for inside, never a number a user can type for it: refused as a flag, a YAML value
    and from Python, while the word reads as auto everywhere, through copies and back into YAML."""
    import dataclasses

    from llm_tuning.options import AUTO

    for flag in ("--batch-size", "--checkpoint-every"):
        _refused(["train", "--model", "m", "--data", "d.json", "--output-dir", "out", flag, "0"], tmp_path, capsys,
                 monkeypatch, f"llm-tuning train: error: {flag} 0: out of range (must be auto, or >= 1)")
    with pytest.raises(UserError, match=r"^TrainConfig\(batch_size=0\): out of range \(must be auto, or >= 1\)"):
        TrainConfig(batch_size=0)
    cfg = TrainConfig(batch_size="auto", checkpoint_every="Auto")
    assert cfg.batch_size is AUTO and cfg.checkpoint_every is AUTO
    copy = dataclasses.replace(cfg, lr=1e-3)
    assert copy.batch_size == AUTO and repr(copy.batch_size) == "auto"
    assert yaml.safe_load(yaml.safe_dump(copy.to_dict()))["batch_size"] == "auto"
