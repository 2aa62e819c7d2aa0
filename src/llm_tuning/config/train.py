"""`llm-tuning train`'s options: the TrainConfig dataclass, every field declared once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .options import METHOD_NAMES, PRECISIONS, QUANTIZATIONS, TEMPLATE_NAMES, option

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
                                      "vocabulary tokens) or random (soft); a text the tokenizer cannot spell "
                                      "starts from the bos token",
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
    fast_loss: bool = option(True, "the output layer only on learned positions, fused with the loss (CPU; on "
                                   "CUDA --kernels decides)", group=T)
    # --- GPU path (issue 21): data/packing.py, train/kernels.py
    packing: bool = option(False, "padding-free: a micro-batch's examples in one row, attention kept inside each "
                                  "(lora, ia3, bitfit, full)", group=T)
    kernels: str = option("auto", "loss and layer kernels: liger (Liger's Triton kernels, CUDA only: pip install "
                                  "'llm-tuning[gpu]'), none (stock transformers), auto (liger on CUDA when "
                                  "installed, else the project's fused loss)", choices=("auto", "liger", "none"),
                          group=T)
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
