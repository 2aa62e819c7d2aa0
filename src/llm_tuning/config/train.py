"""`llm-tuning train`'s options: the TrainConfig dataclass, every field declared once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.templates import TEMPLATE_NAMES
from ..methods import METHODS, option_fields
from ..models.precision import PRECISIONS, QUANTIZATIONS
from ..options import AUTO, check_ranges, option, plain

# The option groups of --help and docs/options.md (the other commands' groups: commands.py)
MODEL_GROUP, DATA_GROUP, METHOD_GROUP = "model", "data", "method"
TRAINING_GROUP, CHECKPOINTS_GROUP = "training", "checkpoints"


@dataclass
class TrainSettings:
    """`llm-tuning train`'s options but the methods' own (each method declares those in its file: TrainConfig
    below is these and theirs together)."""

    # model
    model: str = option("", "base model: local folder or hub id", group=MODEL_GROUP, required=True)
    tokenizer: str | None = option(None, "tokenizer folder or hub id (default: the model's)", group=MODEL_GROUP)
    precision: str = option("fp32", "dtype the base is loaded in", choices=PRECISIONS, group=MODEL_GROUP)
    quantization: str | None = option(None, "load the base 8bit (LLM.int8) or 4bit (NF4) through bitsandbytes",
                                      choices=QUANTIZATIONS, group=MODEL_GROUP)
    int8_threshold: float = option(6.0, "LLM.int8 outlier threshold: larger |activations| go through 16-bit",
                                   group=MODEL_GROUP, range="[0, inf)")
    speedups: bool = option(True, "Bloom: SDPA attention and torch's tanh-GeLU in place of transformers' eager "
                                  "ones (equal values)", group=MODEL_GROUP)
    trust_remote_code: bool = option(False, "allow the model's own Python code to run", group=MODEL_GROUP)
    # data
    data: str = option("", "alpaca data: .json list, .jsonl, save_to_disk folder, or hub dataset name",
                       group=DATA_GROUP, required=True)
    encoding: str | None = option(None, "text encoding of the data file, e.g. gbk (default: UTF-8, a byte-order "
                                        "mark accepted)", group=DATA_GROUP)
    template: str = option("default", "prompt template: default (Human:/Assistant:); a family's official chat "
                                      "format: llama2, chatml (Qwen), llama3, mistral; or auto (the tokenizer's own "
                                      "chat template when it has one, else default)",
                           choices=TEMPLATE_NAMES, group=DATA_GROUP)
    train_on: str = option("all", "multi-turn records: learn every assistant turn, or the last only",
                           choices=("all", "last"), group=DATA_GROUP)
    max_length: int = option(512, "truncate examples to this many tokens", group=DATA_GROUP, range="[1, inf)")
    skip_bad_records: bool = option(False, "drop invalid records (counted) instead of failing", group=DATA_GROUP)
    cache: bool = option(True, "reuse tokenised data across runs ($LLM_TUNING_CACHE)", group=DATA_GROUP)
    val_size: float = option(0.0, "held-out split: a fraction (<1) or a count (>=1)",
                             group=DATA_GROUP, range="[0, inf)")
    val_data: str | None = option(None, "validation records from their own file, in any format --data takes (its "
                                        "--encoding and --skip-bad-records apply), instead of a --val-size split",
                                  group=DATA_GROUP)
    base_eval: bool = option(True, "with held-out records: their loss on the base model first, so that the run "
                                   "ends with base -> trained (false: skip that pass)", group=DATA_GROUP)
    # method
    method: str = option("lora", "the fine-tuning method", choices=tuple(METHODS), group=METHOD_GROUP,
                         hints={"qlora": "QLoRA is LoRA on a quantised base: --method lora --quantization 4bit (or "
                                         "8bit)"})
    # training
    max_steps: int = option(-1, "stop after this many optimiser steps (overrides --epochs when > 0)",
                            group=TRAINING_GROUP, range="[1, inf)", also=(-1,))
    epochs: float = option(1.0, "passes over the data", group=TRAINING_GROUP, range="(0, inf)")
    lr: float | None = option(None, "learning rate (default: the method's own, see docs/methods.md)",
                              group=TRAINING_GROUP, range="(0, inf)")
    batch_size: int = option(4, "examples per device step; auto: the largest the memory estimate says fits in the "
                                "device's free memory (CUDA) or the available RAM (CPU), at most 64 (memory/"
                                "sizing.py)", group=TRAINING_GROUP, range="[1, inf)", words={"auto": AUTO})
    grad_accum: int = option(1, "gradient accumulation steps", group=TRAINING_GROUP, range="[1, inf)")
    warmup_ratio: float = option(0.0, "share of the steps spent warming the learning rate up",
                                 group=TRAINING_GROUP, range="[0, 1)")
    weight_decay: float = option(0.0, "AdamW weight decay", group=TRAINING_GROUP, range="[0, inf)")
    lr_scheduler: str = option("linear", "transformers scheduler name", group=TRAINING_GROUP)
    seed: int = option(42, "random seed (data split, order, initialisation)",
                       group=TRAINING_GROUP, range="[0, 4294967295]")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory "
                                                 "(every method, prefix included)", group=TRAINING_GROUP)
    checkpoint_every: int = option(1, "with --gradient-checkpointing: checkpoint one decoder layer in N (the "
                                      "first, then every Nth: transformers' every_n_layers); the others keep their "
                                      "activations, trading memory back for speed (1: every layer; auto: the "
                                      "largest N the memory estimate says fits, at the batch size)",
                                   group=TRAINING_GROUP, range="[1, inf)", words={"auto": AUTO})
    group_by_length: bool = option(True, "batch examples of similar length together (less padding)",
                                   group=TRAINING_GROUP)
    fast_loss: bool = option(True, "the output layer only on learned positions, fused with the loss (CPU; on "
                                   "CUDA --kernels decides)", group=TRAINING_GROUP)
    # packing and kernels: data/packing.py, train/kernels.py
    packing: bool = option(False, "padding-free: a micro-batch's examples in one row, attention kept inside each "
                                  "(not prompt, ptuning or prefix: their virtual tokens go once per row)",
                           group=TRAINING_GROUP)
    kernels: str = option("auto", "loss and layer kernels: liger (Liger's Triton kernels, CUDA only: pip install "
                                  "'llm-tuning[gpu]'; on a CPU only under TRITON_INTERPRET=1, a slow check), none (stock transformers), auto (liger on CUDA when "
                                  "installed, else the project's fused loss)", choices=("auto", "liger", "none"),
                          group=TRAINING_GROUP)
    adam_epsilon: float | None = option(None, "AdamW epsilon (default 1e-8; 1e-4 when fp16 weights train)",
                                        group=TRAINING_GROUP, range="(0, inf)")
    # checkpoints and logs
    output_dir: str = option("", "where the adapter, checkpoints, config and metrics go",
                             group=CHECKPOINTS_GROUP, required=True)
    save_steps: int = option(50, "checkpoint every N steps", group=CHECKPOINTS_GROUP, range="[1, inf)")
    save_total_limit: int = option(2, "checkpoints kept (at least 2, so a complete one survives a kill)",
                                   group=CHECKPOINTS_GROUP, range="[2, inf)")
    eval_steps: int | None = option(None, "held-out loss every N steps (default: at each save)",
                                    group=CHECKPOINTS_GROUP, range="[1, inf)")
    logging_steps: int = option(1, "log the training loss every N steps", group=CHECKPOINTS_GROUP, range="[1, inf)")
    report_to: str = option("none", "also send the logs to a tracker through the Trainer's own integration "
                                    "(tensorboard: event files in OUTPUT_DIR/runs/)",
                            choices=("none", "tensorboard", "wandb", "mlflow"), group=CHECKPOINTS_GROUP)
    resume: bool = option(False, "continue from the last complete checkpoint in --output-dir", group=CHECKPOINTS_GROUP)
    overwrite: bool = option(False, "replace a non-empty --output-dir", group=CHECKPOINTS_GROUP)
    quiet: bool = option(False, "warnings and errors only: no progress bar or log lines (log.jsonl and metrics.json "
                                "are written all the same)", group=CHECKPOINTS_GROUP)
    extra: dict = option({}, "free-form settings for Python callers", cli=False)

    def __post_init__(self):
        check_ranges(self)  # Python callers: the flags' checks, with the Python spelling

    def to_dict(self) -> dict:
        d = {k: plain(v) for k, v in dataclasses.asdict(self).items()}  # an unsized batch written as auto
        d.pop("extra")
        return d


# `llm-tuning train`: config -> data -> model -> method -> Trainer -> adapter.
TrainConfig = dataclasses.make_dataclass("TrainConfig", option_fields(), bases=(TrainSettings,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = ("`llm-tuning train`: fine-tune a model with one method (the methods' own options in their "
                       "groups below); the adapter (or model), config.yaml, metrics and checkpoints go to --output-dir.")
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
