"""Every option, declared once: a dataclass field with its type, default, choices and one line of help.

The command line (cli/flags.py), the YAML checks (build_config below) and the options tables in the docs
(docs/options.md, the README's method table; cli/docs.py) are all generated from these declarations. An option
that several commands take (--model, --precision, ...) is declared once, in TrainConfig or wherever it belongs,
and the other commands borrow the declaration with `same_as`, so its help text exists in one place.

Values are layered: defaults < YAML file (`--config`, train only) < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import MISSING, dataclass, field

from .errors import UserError

METHOD_NAMES = ("full", "bitfit", "prompt", "ptuning", "prefix", "lora", "ia3")  # methods/__init__.py registers each
PRECISIONS = ("fp32", "bf16", "fp16")
QUANTIZATIONS = ("8bit", "4bit")
TEMPLATE_NAMES = ("default", "llama2", "auto")  # data/templates.py renders each


def option(default, help: str, *, choices=None, group: str = "general", required: bool = False, cli: bool = True):
    """A dataclass field carrying its command-line help. cli=False: settable from YAML / Python only."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "group": group, "required": required,
            "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def same_as(cls, name: str, default=MISSING, required: bool | None = None):
    """Borrow option `name` of dataclass `cls` (its help, choices, group), optionally with another default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = dict(f.metadata)
    if required is not None:
        meta["required"] = required
    value = f.default if default is MISSING else default
    return field(default=value, metadata=meta)


# ---------------------------------------------------------------- train

M, D, MT, T, C, P, L = "model", "data", "method", "training", "checkpoints", "prompt / p-tuning / prefix", "lora"


@dataclass
class TrainConfig:
    """`llm-tuning train`: config -> data -> model -> method -> Trainer -> adapter."""

    # model
    model: str = option("", "base model: local folder or hub id", group=M, required=True)
    tokenizer: str | None = option(None, "tokenizer folder or hub id (default: the model's)", group=M)
    precision: str = option("fp32", "dtype the base is loaded in", choices=PRECISIONS, group=M)
    quantization: str | None = option(None, "load the base 8bit (LLM.int8) or 4bit (NF4) through bitsandbytes",
                                      choices=QUANTIZATIONS, group=M)
    int8_threshold: float = option(6.0, "LLM.int8 outlier threshold: larger |activations| go through 16-bit",
                                   group=M)
    speedups: bool = option(True, "Bloom: SDPA attention and torch's tanh-GeLU in place of transformers' eager "
                                  "ones (equal values)", group=M)
    trust_remote_code: bool = option(False, "allow the model's own Python code to run", group=M)
    # data
    data: str = option("", "alpaca data: .json list, .jsonl, save_to_disk folder, or hub dataset name", group=D,
                       required=True)
    encoding: str | None = option(None, "text encoding of the data file, e.g. gbk (default: UTF-8, a byte-order "
                                        "mark accepted)", group=D)
    template: str = option("default", "prompt template: default (Human:/Assistant:), llama2, or auto (the "
                                      "tokenizer's own chat template when it has one, else default)",
                           choices=TEMPLATE_NAMES, group=D)
    train_on: str = option("all", "multi-turn records: learn every assistant turn, or the last only",
                           choices=("all", "last"), group=D)
    max_length: int = option(512, "truncate examples to this many tokens", group=D)
    skip_bad_records: bool = option(False, "drop invalid records (counted) instead of failing", group=D)
    cache: bool = option(True, "reuse tokenised data across runs ($LLM_TUNING_CACHE)", group=D)
    val_size: float = option(0.0, "held-out split: a fraction (<1) or a count (>=1)", group=D)
    # method
    method: str = option("lora", "the fine-tuning method", choices=METHOD_NAMES, group=MT)
    num_virtual_tokens: int = option(10, "virtual tokens (prompt, ptuning, prefix)", group=P)
    prompt_init: str = option("text", "prompt tuning start: text (hard prompt), vocab (embeddings of sampled "
                                      "vocabulary tokens) or random (soft, at the scale of the model's embeddings)",
                              choices=("text", "vocab", "random"), group=P)
    prompt_text: str = option("下面是一条指令，请写出恰当的回答。",
                              "text whose embeddings start a hard prompt (and prefix tuning's keys/values)", group=P)
    encoder: str = option("mlp", "p-tuning prompt encoder", choices=("mlp", "lstm"), group=P)
    encoder_hidden_size: int | None = option(None, "p-tuning encoder / prefix projection width (default: the "
                                                   "model's hidden size)", group=P)
    prefix_projection: bool = option(False, "prefix tuning: the prefix through a two-layer MLP", group=P)
    lora_r: int = option(8, "LoRA rank", group=L)
    lora_alpha: int = option(16, "LoRA scale numerator (the update is scaled by alpha / r)", group=L)
    lora_dropout: float = option(0.05, "dropout on the LoRA input", group=L)
    target_modules: list[str] | None = option(None, "comma-separated module names for LoRA / IA3 (default: PEFT's "
                                                    "per-architecture choice)", group=L)
    # training
    max_steps: int = option(-1, "stop after this many optimiser steps (overrides --epochs when > 0)", group=T)
    epochs: float = option(1.0, "passes over the data", group=T)
    lr: float | None = option(None, "learning rate (default: the method's own, see docs/methods.md)", group=T)
    batch_size: int = option(4, "examples per device step", group=T)
    grad_accum: int = option(1, "gradient accumulation steps", group=T)
    warmup_ratio: float = option(0.0, "share of the steps spent warming the learning rate up", group=T)
    weight_decay: float = option(0.0, "AdamW weight decay", group=T)
    lr_scheduler: str = option("linear", "transformers scheduler name", group=T)
    seed: int = option(42, "random seed (data split, order, initialisation)", group=T)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory "
                                                 "(every method, prefix included)", group=T)
    group_by_length: bool = option(True, "batch examples of similar length together (less padding)", group=T)
    fast_loss: bool = option(True, "the output layer only on learned positions, fused with the loss", group=T)
    adam_epsilon: float | None = option(None, "AdamW epsilon (default 1e-8; 1e-4 when fp16 weights train)",
                                        group=T)
    # checkpoints and logs
    output_dir: str = option("", "where the adapter, checkpoints, config and metrics go", group=C, required=True)
    save_steps: int = option(50, "checkpoint every N steps", group=C)
    save_total_limit: int = option(2, "checkpoints kept (at least 2, so a complete one survives a kill)", group=C)
    eval_steps: int | None = option(None, "held-out loss every N steps (default: at each save)", group=C)
    logging_steps: int = option(1, "log the training loss every N steps", group=C)
    report_to: str = option("none", "also send the logs to a tracker through the Trainer's own integration "
                                    "(tensorboard: event files in OUTPUT_DIR/runs/)",
                            choices=("none", "tensorboard", "wandb", "mlflow"), group=C)
    resume: bool = option(False, "continue from the last complete checkpoint in --output-dir", group=C)
    overwrite: bool = option(False, "replace a non-empty --output-dir", group=C)
    extra: dict = option({}, "free-form settings for Python callers", cli=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}


# ---------------------------------------------------------------- reading values


def parse_bool(value) -> bool:
    """true/yes/1/on or false/no/0/off: one reading for command-line flags and YAML values alike."""
    v = str(value).lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def base_type(f: dataclasses.Field) -> type:
    """int for `int | None`, list for `list[str] | None`, ... (annotations are strings under `from __future__`)."""
    t = f.type if not isinstance(f.type, str) else f.type.replace(" ", "")
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("list", list), ("dict", dict), ("str", str)):
        if (t if isinstance(t, str) else getattr(t, "__name__", "")).startswith(name):
            return typ
    if typing.get_origin(t) is not None:
        return typing.get_origin(t)
    return str


def coerce(f: dataclasses.Field, value, source: str):
    """A YAML or flag value as the field's type, its choices checked; a UserError naming `source` otherwise."""
    typ = base_type(f)
    flag = "--" + f.name.replace("_", "-")
    if value is None:
        return None
    try:
        if typ is list and isinstance(value, str):
            value = [m.strip() for m in value.split(",") if m.strip()]
        elif typ is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [m.strip() for v in value for m in v.split(",") if m.strip()]  # a repeated flag's pieces
        elif typ is bool and not isinstance(value, bool):
            value = parse_bool(value)
        elif typ is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif typ is float and not isinstance(value, bool):
            value = float(value)
        elif typ is str and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{source}: {f.name!r} has a bad value {value!r} (expected {f.type})") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{flag} {value!r} is unknown; choose one of {', '.join(choices)}")
    return value


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return data


def build_config(file_values: dict | None, flag_values: dict, config_path: str = "config", cls=TrainConfig):
    """Defaults, overridden by the YAML file, overridden by flags given on the command line."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    merged: dict = {}
    for source, values in ((config_path, file_values or {}), ("flag", flag_values)):
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in fields:
                raise UserError(f"{config_path}: unknown option {key!r}" if source != "flag" else f"unknown option {key!r}")
            merged[k] = coerce(fields[k], value, config_path if source != "flag" else "flag")
    cfg = cls(**merged)
    for name, f in fields.items():
        if f.metadata.get("required") and getattr(cfg, name) in (None, ""):
            raise UserError(f"--{name.replace('_', '-')} is required"
                            + (" (on the command line or in --config)" if cls is TrainConfig else ""))
    return cfg


# ---------------------------------------------------------------- the other commands (shared options borrowed)

I, G, E = "inference", "generation", "evaluation"


@dataclass
class LoadConfig:
    """What loading a trained model for inference takes: the base, an adapter, precision and template."""

    model: str = same_as(TrainConfig, "model")
    adapter: str | None = option(None, "adapter folder written by `llm-tuning train` (or a plain PEFT adapter)",
                                 group=M)
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    template: str | None = option(None, "prompt template (default: the adapter's, else default)",
                                  choices=TEMPLATE_NAMES, group=D)
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")


@dataclass
class GenerateConfig(LoadConfig):
    """`llm-tuning generate`: answer one instruction."""

    prompt: str = option("", "the instruction", group=G, required=True)
    input: str = option("", "optional input for the instruction", group=G)
    max_new_tokens: int = option(128, "answer length limit in tokens", group=G)
    sample: bool = option(False, "sample instead of greedy decoding", group=G)
    temperature: float = option(0.7, "sampling temperature (with --sample)", group=G)
    top_p: float = option(0.9, "nucleus sampling: keep the smallest set of tokens with this much probability",
                          group=G)


@dataclass
class EvalConfig(LoadConfig):
    """`llm-tuning eval`: held-out response loss and perplexity (and, with --generate, ROUGE / BLEU)."""

    data: str = same_as(TrainConfig, "data")
    encoding: str | None = same_as(TrainConfig, "encoding")
    max_length: int = same_as(TrainConfig, "max_length")
    batch_size: int = option(8, "records per forward pass", group=E)
    limit: int | None = option(None, "evaluate only the first N records", group=E)
    skip_bad_records: bool = same_as(TrainConfig, "skip_bad_records")
    generate: bool = option(False, "also answer each record (greedy) and score it: ROUGE-1/2/L on jieba words, "
                                   "BLEU-4 on characters", group=E)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
    predictions: str | None = option(None, "with --generate: write prompt/reference/prediction JSONL here", group=E)
    json: bool = option(False, "print JSON instead of a table", group=E)


@dataclass
class MergeConfig:
    """`llm-tuning merge`: fold a LoRA / IA3 / BitFit adapter into its base model."""

    model: str = same_as(TrainConfig, "model")
    adapter: str = same_as(LoadConfig, "adapter", required=True)
    output: str = option("", "folder for the merged standalone model", group=M, required=True)
    overwrite: bool = option(False, "replace a non-empty output folder", group=M)
    save_precision: str = option("fp32", "dtype of the written model", choices=PRECISIONS, group=M)
    save_quantization: str | None = option(None, "re-quantise the merged model before saving", choices=QUANTIZATIONS,
                                           group=M)
    merge_base: str = option("auto", "for an adapter trained on a quantised base: merge into the original weights or "
                                     "the dequantised quantised ones (auto: dequantized for 4bit, original for 8bit)",
                             choices=("auto", "original", "dequantized"), group=M)
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")


_ESTIMATED = ("method", "precision", "quantization", "batch_size", "max_length", "gradient_checkpointing",
              "fast_loss", "num_virtual_tokens", "encoder", "encoder_hidden_size", "prefix_projection", "lora_r",
              "lora_dropout", "target_modules")


@dataclass
class EstimateConfig:
    """`llm-tuning estimate`: peak training memory from a model config alone (every option that changes it)."""

    model: str = option("", "a preset (llama-2-7b, bloom-1b4), a model folder, a config.json or a hub id",
                        group=M, required=True)
    method: str = same_as(TrainConfig, "method")
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    batch_size: int = same_as(TrainConfig, "batch_size")
    max_length: int = same_as(TrainConfig, "max_length")
    gradient_checkpointing: bool = same_as(TrainConfig, "gradient_checkpointing")
    fast_loss: bool = same_as(TrainConfig, "fast_loss")
    num_virtual_tokens: int = same_as(TrainConfig, "num_virtual_tokens")
    encoder: str = same_as(TrainConfig, "encoder")
    encoder_hidden_size: int | None = same_as(TrainConfig, "encoder_hidden_size")
    prefix_projection: bool = same_as(TrainConfig, "prefix_projection")
    lora_r: int = same_as(TrainConfig, "lora_r")
    lora_dropout: float = same_as(TrainConfig, "lora_dropout")
    target_modules: list[str] | None = same_as(TrainConfig, "target_modules")
    json: bool = same_as(EvalConfig, "json")

    def train_config(self) -> TrainConfig:
        """The training run this estimates (the method options as `train` reads them)."""
        return TrainConfig(**{k: getattr(self, k) for k in _ESTIMATED})


@dataclass
class InitModelConfig:
    """`llm-tuning init-model`: a tiny random Bloom or Llama with a tokenizer."""

    arch: str = option("", "architecture", choices=("bloom", "llama"), group=M, required=True)
    output: str = option("", "folder for the model and tokenizer", group=M, required=True)
    tokenizer: str | None = option(None, "existing tokenizer folder (default: train a byte-level BPE)", group=M)
    train_text: str | None = option(None, "alpaca data to train the BPE on (default: the bundled Chinese sample)",
                                    group=M)
    vocab_size: int = option(2000, "BPE vocabulary size", group=M)
    hidden_size: int | None = option(None, "hidden size (default 64)", group=M)
    num_layers: int | None = option(None, "decoder layers (default 2)", group=M)
    num_heads: int | None = option(None, "attention heads (default 4)", group=M)
    num_kv_heads: int | None = option(None, "Llama key/value heads (default 2)", group=M)
    intermediate_size: int | None = option(None, "Llama MLP width (default 128)", group=M)
    seed: int = same_as(TrainConfig, "seed", default=0)


@dataclass
class DemoConfig:
    """`llm-tuning demo`: the embedded default job (tiny model, bundled sample, no network)."""

    output_dir: str = option("runs/demo", "folder for the demo's models", group=C)
    steps: int = option(100, "LoRA steps on the 20 records set aside", group=T)
    pretrain_steps: int = option(600, "steps of the stand-in pre-training (a full fine-tune of the random model on "
                                      "the other records)", group=T)


@dataclass
class CompareCommand:
    """`llm-tuning compare`: several methods on one budget, a report with table and plots."""

    config: str = option("", "compare YAML: model, data, output_dir, budget_tokens, runs (see docs/compare.md)",
                         group=C, required=True)
    force: bool = option(False, "rerun runs that already have a result.json", group=C)


@dataclass
class CompareConfig:
    """The top-level keys of a compare YAML (besides any train option, shared by every run)."""

    model: str = same_as(TrainConfig, "model")
    data: str = same_as(TrainConfig, "data")
    output_dir: str = option("", "the report folder (one sub-folder per run)", group=C, required=True)
    runs: list = option([], "the runs: a list of mappings, each with a name, a method and any train option",
                        group=C, required=True)
    budget_tokens: int | None = option(None, "training tokens per run; the steps follow from the records' mean "
                                             "length", group=T)
    max_steps: int | None = option(None, "steps per run instead of budget_tokens", group=T)
    eval_records: int = option(20, "held-out records answered for ROUGE / BLEU", group=E)
    max_new_tokens: int = option(64, "answer length limit for ROUGE / BLEU", group=E)
    samples: int = option(3, "sample answers shown in the report", group=E)
    title: str | None = option(None, "report title (default: 'Method comparison on MODEL')", group=E)
    common: dict = option({}, "train options shared by every run (as top-level train keys are)", group=T)
    heldout_size: float = option(0.1, "held-out records of the table (a fraction or a count): every run and the "
                                      "base are scored on them, nothing is chosen on them", group=D)
    val_size: float = option(0.1, "validation records (a fraction or a count), apart from the held-out ones: "
                                  "the learning rate is chosen on them, the loss during training measured on them",
                             group=D)
    split_seed: int = option(0, "seed of the held-out / validation / training split (one split for every run)",
                             group=D)
    seeds: list = option([], "training seeds: each run is repeated per seed, the table shows mean ± std "
                             "(default: the train option seed alone)", group=T)
    lr: object = option(None, "learning rate of the runs that set none: a number, a list of rates to sweep, or "
                              "auto (the method's default rate times lr_factors); default: the method's rate",
                        group=T)
    lr_factors: list = option([1 / 3, 1, 3], "lr: auto sweeps the method's default rate times these factors "
                                             "(default 1/3, 1, 3)", group=T)
    sweep_seeds: int | None = option(None, "a sweep trains each rate on the first N seeds only (default: all); "
                                           "the chosen rate then trains on every seed", group=T)
    eval_every: int | None = option(None, "validation loss every N steps during training (default: 8 points "
                                          "per run)", group=E)
    parallel: int = option(1, "runs trained at once, each in its own process (with threads: 1, as many as cores "
                              "saves the threads' synchronisation on small models)", group=T)
    threads: int | None = option(None, "torch threads per training process (OMP_NUM_THREADS; default: torch's "
                                       "choice, one per core)", group=T)


Q = "quantisation lab"


@dataclass
class QuantlabConfig:
    """`llm-tuning quantlab`: weight, product and end-to-end quantisation errors (int8, LLM.int8, NF4, FP4)."""

    model: str = same_as(TrainConfig, "model")
    adapter: str | None = same_as(LoadConfig, "adapter")
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")
    data: str = same_as(TrainConfig, "data")
    encoding: str | None = same_as(TrainConfig, "encoding")
    template: str | None = same_as(LoadConfig, "template")
    max_length: int = same_as(TrainConfig, "max_length")
    skip_bad_records: bool = same_as(TrainConfig, "skip_bad_records")
    records: int = option(32, "records run through the model for the activations and the held-out losses", group=Q)
    thresholds: list[str] = option(["0", "3", "6", "8"], "LLM.int8 outlier thresholds to measure, comma-separated "
                                                         "(0 = no decomposition)", group=Q)
    max_rows: int = option(4096, "token rows of each linear layer's input kept for the product errors", group=Q)
    demo_outliers: int = option(0, "DEMONSTRATION: also measure with K feature dimensions of every linear "
                                   "layer's input scaled by --demo-scale, as large models' emergent outliers are",
                                group=Q)
    demo_scale: float = option(20.0, "the factor --demo-outliers multiplies its dimensions by", group=Q)
    output_dir: str = option("", "folder for report.md, report.html, the PNGs and quantlab.json", group=C,
                             required=True)
    json: bool = same_as(EvalConfig, "json")


S_ = "server"


@dataclass
class ChatConfig(LoadConfig):
    """`llm-tuning chat`: a streaming multi-turn conversation in the terminal (/reset, /exit; Ctrl-C stops one)."""

    system: str = option("", "system prompt that leads the conversation", group=G)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
    sample: bool = same_as(GenerateConfig, "sample")
    temperature: float = same_as(GenerateConfig, "temperature")
    top_p: float = same_as(GenerateConfig, "top_p")
    seed: int | None = option(None, "random seed for sampling (default: a fresh one each run)", group=G)


@dataclass
class ServeConfig:
    """`llm-tuning serve`: an OpenAI-compatible API over one base and many adapters, a web playground at /."""

    model: str = same_as(TrainConfig, "model")
    adapter: list[str] | None = option(None, "NAME=DIR: serve the adapter in DIR as model NAME; repeat the flag "
                                             "(or comma-separate) for more; `base` is the model without adapter",
                                       group=M)
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    template: str | None = same_as(LoadConfig, "template")
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface; set --api-key then)",
                       group=S_)
    port: int = option(8000, "TCP port to listen on", group=S_)
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on the API (default: "
                                       "$LLM_TUNING_API_KEY; unset: no key)", group=S_)
    reports: str | None = option(None, "folder of `compare` reports the playground may open (nothing outside it "
                                       "is served)", group=S_)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
