"""Prompt templates: how a conversation becomes the text the model sees, turn by turn.

A template renders (system, [(user, assistant), ...]) as pieces: ("prompt", text) the model reads,
("answer", text) an assistant turn it learns, ("bos", "") a bos token by id. tokenize.py turns the pieces into
ids: eos is appended by id after each answer, and only answers are learned.

- default: the seed's "Human: ...\\n\\nAssistant: " (byte for byte for a single turn), "System: ...\\n\\n" first;
- llama2: Meta's chat format, "[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n... [/INST] ", each later turn opened by bos;
- auto: the tokenizer's own chat template (`tokenizer.chat_template`, through apply_chat_template) when it has
  one, else default. An answer is what the template writes after its generation prompt, up to and including
  the first eos (eos appended by id if the template writes none).
"""

from __future__ import annotations

from ..errors import UserError

TEMPLATE_NAMES = ("default", "llama2", "auto")  # the --template choices, each rendered below


def _default(system: str, pairs) -> list[tuple[str, str]]:
    out = []
    for i, (user, answer) in enumerate(pairs):
        head = f"System: {system}\n\n" if system and i == 0 else ""
        out.append(("prompt", head + "Human: " + user + "\n\nAssistant: "))
        if answer is not None:
            out.append(("answer", answer))
    return out


def _llama2(system: str, pairs) -> list[tuple[str, str]]:
    # The tokenizer adds the first <s> itself; later turns get theirs by id.
    out = []
    for i, (user, answer) in enumerate(pairs):
        if i:
            out.append(("bos", ""))
        if system and i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out.append(("prompt", f"[INST] {user} [/INST] "))
        if answer is not None:
            out.append(("answer", answer))
    return out


def _chat_template(system: str, pairs, tokenizer) -> list[tuple[str, str]]:
    """Pieces from the tokenizer's chat template: rendered once per turn boundary, each rendering a prefix of the
    next (a template that rewrites earlier turns cannot be split into learned turns)."""
    messages = [{"role": "system", "content": system}] if system else []
    cuts = []
    for user, answer in pairs:
        messages.append({"role": "user", "content": user})
        cuts.append(("prompt", _apply(tokenizer, messages, True)))
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
            cuts.append(("answer", _apply(tokenizer, messages, False)))
    out, done = [], ""
    for kind, text in cuts:
        if not text.startswith(done):
            raise UserError("--template auto: the tokenizer's chat template rewrites earlier turns when a turn is "
                            "added, so its answers cannot be found for the loss; use --template default or llama2")
        out.append((kind, text[len(done):]))
        done = text
    return out


def _apply(tokenizer, messages, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # a template's own raise_exception (e.g. "roles must alternate"), jinja errors
        raise UserError(f"--template auto: the tokenizer's chat template failed ({str(e).splitlines()[0]}); "
                        "use --template default or llama2") from None


def check_template(template: str) -> str:
    if template not in TEMPLATE_NAMES:
        raise UserError(f"--template {template!r} is unknown; choose one of {', '.join(TEMPLATE_NAMES)}")
    return template


def resolve(template: str, tokenizer=None) -> str:
    """'auto' as 'chat' (the tokenizer has a chat template) or 'default'; other names unchanged."""
    check_template(template)
    if template != "auto":
        return template
    if tokenizer is None:
        raise UserError("--template auto needs the tokenizer (its chat template) to render a prompt")
    return "chat" if getattr(tokenizer, "chat_template", None) else "default"


def render(system: str, pairs, template: str = "default", tokenizer=None) -> list[tuple[str, str]]:
    """The conversation's pieces; a last pair with answer None ends with the prompt for that answer."""
    kind = resolve(template, tokenizer)
    if kind == "chat":
        return _chat_template(system, pairs, tokenizer)
    return (_llama2 if kind == "llama2" else _default)(system, pairs)


def format_prompt(record: dict, template: str = "default", tokenizer=None) -> str:
    """The text before the record's answer, as one string (for display; tokenize.prompt_ids gives the exact
    ids). Earlier answers are followed by the tokenizer's eos text (bos likewise) when a tokenizer is given."""
    from .conversations import turns

    system, pairs = turns({**record, "output": None})
    eos = (getattr(tokenizer, "eos_token", None) or "") if resolve(template, tokenizer) != "chat" else ""
    bos = getattr(tokenizer, "bos_token", None) or ""
    text = []
    for kind, piece in render(system, pairs, template, tokenizer):
        text.append(piece + eos if kind == "answer" else bos if kind == "bos" else piece)
    return "".join(text)
