"""The training configuration: one dataclass, filled from defaults < YAML file < command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from .errors import UserError


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    method: str = "lora"
    output_dir: str = ""
    tokenizer: str | None = None  # default: the model folder
    template: str = "default"
    max_length: int = 512
    skip_bad_records: bool = False
    cache: bool = True  # reuse tokenised data across runs (data/cache.py)
    val_size: float = 0.0
    # optimisation
    max_steps: int = -1
    epochs: float = 1.0
    lr: float | None = None  # None: the method's own default (prompt methods need far larger steps than LoRA)
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 42
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    group_by_length: bool = True  # batches of similar lengths: less padding computed
    fast_loss: bool = True  # project onto the vocabulary only where a token is learned (fastloss.py)
    speedups: bool = True  # Bloom: SDPA attention and torch's tanh-GeLU, equal to transformers' (speedups.py)
    quantization: str | None = None  # None, "8bit" (LLM.int8) or "4bit" (NF4), through bitsandbytes
    int8_threshold: float = 6.0  # LLM.int8 outlier threshold
    adam_epsilon: float | None = None  # None: 1e-8, or 1e-4 when fp16 weights train (1e-8 rounds to 0 in fp16)
    save_steps: int = 50
    save_total_limit: int = 2
    eval_steps: int | None = None  # default: at each save
    logging_steps: int = 1
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    # prompt / p-tuning / prefix
    num_virtual_tokens: int = 10
    prompt_init: str = "text"
    prompt_text: str = "下面是一条指令，请写出恰当的回答。"
    encoder: str = "mlp"
    encoder_hidden_size: int | None = None  # default: the model's hidden size
    prefix_projection: bool = False
    # lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # default: PEFT's per-architecture choice
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "extra"}


def parse_bool(value) -> bool:
    """true/yes/1/on or false/no/0/off: one reading for command-line flags and YAML values alike."""
    v = str(value).lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def _coerce(key: str, value, source: str):
    if key == "target_modules" and isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    typ = FIELDS[key].type
    try:
        if value is None:
            return None
        if "bool" in typ and not isinstance(value, bool):
            return parse_bool(value)
        if typ.startswith("int") and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ.startswith("float") and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{source}: {key!r} has a bad value {value!r} (expected {typ})") from None
    return value


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return data


def build_config(file_values: dict | None, flag_values: dict, config_path: str = "config") -> TrainConfig:
    """Defaults, overridden by the YAML file, overridden by flags given on the command line."""
    merged: dict = {}
    for source, values in ((config_path, file_values or {}), ("flag", flag_values)):
        for key, value in values.items():
            k = key.replace("-", "_")
            if k not in FIELDS:
                raise UserError(f"{config_path}: unknown option {key!r}" if source != "flag" else f"unknown option {key!r}")
            merged[k] = _coerce(k, value, source if source == "flag" else config_path)
    cfg = TrainConfig(**merged)
    for key in ("model", "data", "output_dir"):
        if not getattr(cfg, key):
            raise UserError(f"--{key.replace('_', '-')} is required (on the command line or in --config)")
    return cfg
