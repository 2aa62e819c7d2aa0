"""Prompt templates: how an alpaca record becomes the text the model sees before its answer."""

from __future__ import annotations

from ..errors import UserError


def _default(instruction: str, input: str) -> str:
    # The seed's template, byte for byte: "\n".join(...).strip() drops the newline when input is empty.
    return "Human: " + "\n".join([instruction, input]).strip() + "\n\nAssistant: "


def _llama2(instruction: str, input: str) -> str:
    # Llama-2 chat format; the tokenizer adds <s> itself, so it is not written here.
    user = "\n".join([instruction, input]).strip()
    return f"[INST] {user} [/INST] "


TEMPLATES = {"default": _default, "llama2": _llama2}


def format_prompt(record: dict, template: str = "default") -> str:
    try:
        fn = TEMPLATES[template]
    except KeyError:
        raise UserError(f"--template {template!r} is unknown; choose one of {', '.join(TEMPLATES)}") from None
    return fn(record["instruction"], record.get("input") or "")
