"""The model card (README.md) of a trained adapter or model and of a merged one: what it is, what it was trained
on, what it did to the held-out loss, the command that made it, with Hub metadata in its YAML front matter
(huggingface_hub's ModelCardData: library_name, base_model, base_model_relation, tags, pipeline_tag).

PEFT's save_pretrained writes a template card of "[More Information Needed]" into the folder; this one is
written after it, in its place."""

from __future__ import annotations

import dataclasses
import os
import shlex

CARD = "README.md"
# Options that say how a command ran, not what it made: left out of the command a card shows.
_NOT_SHOWN = ("resume", "overwrite", "quiet")


def train_command(cfg) -> str:
    """`llm-tuning train` with every option that differs from its default, as the command line takes it."""
    parts = ["llm-tuning", "train"]
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("cli", True) or f.name in _NOT_SHOWN:
            continue
        value = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            value = int(value)  # --val-size 8, as it was typed
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        parts += ["--" + f.name.replace("_", "-"), shlex.quote(str(value))]
    return " ".join(parts)


def _loss_row(metrics: dict) -> str:
    after, base = metrics.get("eval_loss"), metrics.get("base_eval_loss")
    if after is None:
        return "not measured (no held-out records: --val-size or --val-data)"
    records = f" on {metrics['heldout_records']} records" if metrics.get("heldout_records") else ""
    if base is None:
        return f"{after:.4f}{records} (the base model's not measured: --base-eval false)"
    return f"{base:.4f} (base model) -> {after:.4f} ({after - base:+.4f}){records}"


def _method_text(cfg, method) -> str:
    own = [f"{name} {getattr(cfg, name)}" for name, _, _ in method.options if getattr(cfg, name) is not None]
    return method.name + (f" ({', '.join(own)})" if own else "")


def _precision_text(cfg) -> str:
    if cfg.quantization:
        return f"{cfg.precision} trained weights on a {cfg.quantization} base (bitsandbytes)"
    return cfg.precision


def _card_data(base: str, library: str | None, relation: str, tags: list[str]):
    from huggingface_hub import ModelCardData

    data = {"base_model": base, "base_model_relation": relation, "pipeline_tag": "text-generation",
            "tags": ["llm-tuning", *tags]}
    if library:
        data["library_name"] = library
    return ModelCardData(**data)


def _write(folder: str, data, body: str) -> None:
    from huggingface_hub import ModelCard

    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(os.path.join(folder, CARD))


def write_train_card(folder: str, cfg, method, metrics: dict) -> None:
    """The card of a run's output folder (rank 0, into the folder the final artefacts are gathered in)."""
    from .processes import world_size

    peft = bool(getattr(method, "peft_type", ""))
    what = "model" if method.saves_model else "adapter"
    library = "transformers" if method.saves_model else "peft" if peft else None
    batch = f"batch {cfg.batch_size} x {cfg.grad_accum} accumulated" + (
        f" x {world_size()} processes" if world_size() > 1 else "")
    rows = [("method", _method_text(cfg, method)), ("base model", f"`{cfg.model}`"),
            ("data", f"`{cfg.data}`: {metrics.get('train_examples', '?')} training examples, template "
                     f"{cfg.template}, max length {cfg.max_length} tokens"),
            ("steps", f"{metrics.get('steps')} ({batch}, learning rate {metrics.get('learning_rate')}, seed {cfg.seed})"),
            ("precision", _precision_text(cfg)),
            ("held-out loss", _loss_row(metrics)),
            ("trainable parameters", f"{metrics.get('trainable_params', 0):,} of {metrics.get('total_params', 0):,}")]
    out = shlex.quote(cfg.output_dir)
    use = (f"llm-tuning generate --model {out} --prompt '...'" if method.saves_model else
           f"llm-tuning generate --model {shlex.quote(cfg.model)} --adapter {out} --prompt '...'")
    body = "\n".join([
        f"# {os.path.basename(os.path.normpath(cfg.output_dir))}", "",
        f"A {method.name} {what} of `{cfg.model}`, trained with llm-tuning.", "",
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "The held-out loss is the mean cross-entropy over the response tokens of records the run did not train on; "
        "`loss.png` beside this card draws it and the training loss against the steps.", "",
        "## How it was made", "", "```bash", train_command(cfg), "```", "",
        "## How to use it", "", "```bash", use, "```", ""])
    tags = [method.name] + (["peft"] if peft else []) + ([f"{cfg.quantization}"] if cfg.quantization else [])
    _write(folder, _card_data(cfg.model, library, "finetune" if method.saves_model else "adapter", tags), body)


def write_merged_card(folder: str, name: str, base: str, adapter: str, method: str, info: dict,
                      metrics: dict | None, command: str) -> None:
    """The card of a merged model named `name`, written into `folder`: the adapter's own figures (measured before
    the merge) and where it came from; command: the merge as it was asked for."""
    config = info.get("config") or {}
    rows = [("merged from", f"the {method} adapter `{adapter}` folded into `{base}`"),
            ("held-out loss", _loss_row(metrics or {}) + " (the adapter's, measured before the merge)")]
    body = "\n".join([
        f"# {os.path.basename(os.path.normpath(name))}", "",
        f"`{base}` with a {method} adapter merged into its weights by llm-tuning: a plain transformers model.", "",
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## How it was made", "", "```bash", command, "```", "", *(["The adapter's training:", "", "```bash", config_command(config), "```", ""] if config else [])])
    _write(folder, _card_data(base, "transformers", "merge", [method, "merged"]), body)


def config_command(config: dict) -> str:
    """train_command of a run's saved config (config.yaml / llm_tuning.json's config)."""
    from ..config import FIELDS, TrainConfig

    return train_command(TrainConfig(**{k: v for k, v in config.items() if k in FIELDS}))
