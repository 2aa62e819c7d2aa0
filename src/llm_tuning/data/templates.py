"""Prompt templates: how a conversation becomes the text the model sees, turn by turn.

A template renders (system, [(user, assistant), ...]) as pieces: ("prompt", text) the model reads and
("answer", text) an assistant turn it learns. Two kinds:

- default: the seed's "Human: ...\\n\\nAssistant: " (byte for byte for a single turn), "System: ...\\n\\n" first.
  tokenize.py tokenises it piece by piece, the first with the tokenizer's bos, and appends eos by id after each
  answer.
- the families' official chat formats, written exactly as the `chat_template` of the family's tokenizer_config.json
  renders them, special tokens as text: the conversation is tokenised as one text, without added special
  tokens (as `apply_chat_template(..., tokenize=True)` does, so as vLLM or transformers serve the model), and
  the answers are found by character offsets. Tokenising pieces apart would differ from that on SentencePiece
  tokenizers (`[/INST]Hello` is not `[/INST]` + `▁Hello`). An answer is what the template writes after its
  generation prompt up to and including its end token; what follows that token (ChatML's newline) is read, not
  learned.
  - llama2: Llama-2-chat's `<s>[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nU [/INST] A </s>`, each turn opened by bos;
  - chatml: Qwen2 / Qwen1.5 chat's `<|im_start|>role\\n...<|im_end|>\\n`, its default system prompt "You are a
    helpful assistant." when none is given (Qwen2.5's own default differs: give the system prompt in the data);
  - llama3: Meta-Llama-3-Instruct's `<|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>`,
    every message stripped as the template does (Llama-3.1's date header is not written);
  - mistral: Mistral's "v1" format (mistral-common's v1 template, Mistral-7B-Instruct-v0.2's tokenizer_config):
    `<s> [INST] S\\n\\nU [/INST] A</s> [INST] ...`, the system prompt before the first user turn. (v0.3's
    template puts the system prompt in the last user turn only, so a training conversation would lose it, and
    its prompt and full renders differ; v0.1's first release has no system role.)
  ChatML and Llama-3 end answers with their own token, not the tokenizer's eos: training sets the tokenizer's
  eos to it (saved with the adapter), so that generation stops there.
- auto: the tokenizer's own chat template (`tokenizer.chat_template`, through apply_chat_template) when it has
  one, else default. An answer is what the template writes after its generation prompt, up to and including
  the first eos (eos appended by id if the template writes none).
"""

from __future__ import annotations

from ..errors import UserError

TEMPLATE_NAMES = ("default", "llama2", "chatml", "llama3", "mistral", "auto")  # the --template choices
QWEN2_SYSTEM = "You are a helpful assistant."
# The tokens a family's template writes that its tokenizer must know as one token each (the first ends an answer)
MARKERS = {"chatml": ("<|im_end|>", "<|im_start|>"),
           "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")}


def _default(system: str, pairs, bos: str, eos: str) -> list[tuple[str, str]]:
    out = []
    for i, (user, answer) in enumerate(pairs):
        head = f"System: {system}\n\n" if system and i == 0 else ""
        out.append(("prompt", head + "Human: " + user + "\n\nAssistant: "))
        if answer is not None:
            out.append(("answer", answer))
    return out


def _llama2(system: str, pairs, bos: str, eos: str) -> list[tuple[str, str]]:
    out = []
    for i, (user, answer) in enumerate(pairs):
        if system and i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out.append(("prompt", f"{bos}[INST] {user.strip()} [/INST]"))
        if answer is not None:
            out.append(("answer", f" {answer.strip()} {eos}"))
    return out


def _chatml(system: str, pairs, bos: str, eos: str) -> list[tuple[str, str]]:
    out, lead = [], f"<|im_start|>system\n{system or QWEN2_SYSTEM}<|im_end|>\n"
    for user, answer in pairs:
        out.append(("prompt", f"{lead}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"))
        if answer is not None:
            out += [("answer", f"{answer}<|im_end|>"), ("prompt", "\n")]  # the newline after the end: read only
        lead = ""
    return out


def _llama3(system: str, pairs, bos: str, eos: str) -> list[tuple[str, str]]:
    def header(role):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    out, lead = [], bos + (f"{header('system')}{system.strip()}<|eot_id|>" if system else "")
    for user, answer in pairs:
        out.append(("prompt", f"{lead}{header('user')}{user.strip()}<|eot_id|>{header('assistant')}"))
        if answer is not None:
            out.append(("answer", f"{answer.strip()}<|eot_id|>"))
        lead = ""
    return out


def _mistral(system: str, pairs, bos: str, eos: str) -> list[tuple[str, str]]:
    out = []
    for i, (user, answer) in enumerate(pairs):
        head = (f"{bos} [INST] " + (f"{system}\n\n" if system else "")) if i == 0 else " [INST] "
        out.append(("prompt", f"{head}{user} [/INST]"))
        if answer is not None:
            out.append(("answer", f" {answer}{eos}"))
    return out


RENDERERS = {"default": _default, "llama2": _llama2, "chatml": _chatml, "llama3": _llama3, "mistral": _mistral}
OFFICIAL = ("llama2", "chatml", "llama3", "mistral")  # tokenised as one text (tokenize.py)
FAMILY_BOS = {"llama2": "<s>", "mistral": "<s>", "llama3": "<|begin_of_text|>"}  # shown when no tokenizer is given


def check_markers(template: str, tokenizer) -> None:
    """A UserError unless the tokenizer reads each of the template's special tokens as one token (a tokenizer of
    another family would learn `<|im_end|>` as a string of plain pieces, and never stop on it)."""
    for marker in MARKERS.get(template, ()):
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(f"--template {template}: the tokenizer has no {marker!r} token (the {template} family's "
                            f"tokenizers have it); use that family's tokenizer (--tokenizer) or --template default")


def use_end_token(tokenizer, template: str | None, log=print):
    """For chatml / llama3: the template's end token becomes the tokenizer's eos (its pad unchanged), so that
    generation stops where the answers learned to end; saved with the adapter, inference reads it back."""
    if template not in MARKERS:
        return tokenizer
    check_markers(template, tokenizer)
    end = MARKERS[template][0]
    if tokenizer.eos_token != end:
        log(f"--template {template}: eos is {end!r} (was {tokenizer.eos_token!r}): answers end with it")
        tokenizer.eos_token = end
    return tokenizer


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
                            "added, so its answers cannot be found for the loss; use another --template")
        out.append((kind, text[len(done):]))
        done = text
    return out


def _apply(tokenizer, messages, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # a template's own raise_exception (e.g. "roles must alternate"), jinja errors
        raise UserError(f"--template auto: the tokenizer's chat template failed ({str(e).splitlines()[0]}); "
                        "use another --template") from None


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
    if tokenizer is None:  # for display: the family's own
        bos, eos = FAMILY_BOS.get(kind, ""), "</s>"
    else:
        bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    return RENDERERS[kind](system, pairs, bos, eos)


def format_prompt(record: dict, template: str = "default", tokenizer=None) -> str:
    """The text before the record's answer, as one string (for display; tokenize.prompt_ids gives the exact
    ids). With default, earlier answers are followed by the tokenizer's eos text when a tokenizer is given (the
    other templates write their own)."""
    from .conversations import turns

    system, pairs = turns({**record, "output": None})
    eos = (getattr(tokenizer, "eos_token", None) or "") if resolve(template, tokenizer) == "default" else ""
    return "".join(piece + eos if kind == "answer" else piece
                   for kind, piece in render(system, pairs, template, tokenizer))
