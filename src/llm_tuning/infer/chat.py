"""Conversations: a list of messages as one prompt, and the `llm-tuning chat` terminal REPL.

`prompt_from_messages` is the ONE place where a `messages` list (OpenAI's role/content form) becomes the text
the model continues: the REPL and the server's /v1/chat/completions both call it.
"""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import UserError

ROLES = ("system", "user", "assistant")


def check_messages(messages: list[dict]) -> None:
    """Roles known, contents strings, and the conversation ends with the user's turn."""
    if not messages:
        raise UserError("messages: empty; send at least one {'role': 'user', 'content': ...}")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise UserError(f"messages[{i}].role {m.get('role')!r}: expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"messages[{i}].content: expected a string")
    if messages[-1]["role"] != "user":
        raise UserError("messages: the last message must be the user's (role 'user')")


def prompt_from_messages(messages: list[dict], template: str = "default", tokenizer=None) -> str:
    """The prompt for a conversation, ending where the assistant's next answer starts.

    Rendered by data/templates.py as training renders a multi-turn record (system first, each earlier exchange
    finished, the last user turn open): default, a family's chat format (llama2, chatml, llama3, mistral), or
    with `auto` the tokenizer's own chat template. With default, earlier answers end with the tokenizer's eos
    *text*; the exact ids training sees are data.tokenize.conversation_prompt_ids(tokenizer, messages, template)."""
    from ..data.conversations import from_messages
    from ..data.templates import format_prompt

    check_messages(messages)
    system, pairs = from_messages(messages)
    record = {"instruction": pairs[-1][0], "input": "", "system": system, "history": [list(p) for p in pairs[:-1]]}
    return format_prompt(record, template, tokenizer)


def prompt_ids_from_messages(messages: list[dict], template: str, tokenizer) -> list[int]:
    """The token ids of prompt_from_messages's prompt as training sees them (each earlier answer ends with eos
    by id): what the REPL and the server feed the model."""
    from ..data.tokenize import conversation_prompt_ids

    check_messages(messages)
    return conversation_prompt_ids(tokenizer, messages, template)


def fit_history(messages: list[dict], template: str, tokenizer, room: int | None) -> tuple[list[dict], int]:
    """Drop the oldest exchanges until the prompt fits in `room` tokens. (messages kept, exchanges dropped)."""
    dropped = 0
    while room is not None and len(prompt_ids_from_messages(messages, template, tokenizer)) > room:
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
        if first is None or first == len(messages) - 1:
            break  # only the question itself is left: the caller reports it as too long
        end = first + 1
        while end < len(messages) - 1 and messages[end]["role"] == "assistant":
            end += 1
        messages = messages[:first] + messages[end:]
        dropped += 1
    return messages, dropped


def printable(text: str) -> str:
    """Model output safe for a terminal: control characters (escape sequences included) shown as U+FFFD."""
    return "".join(c if c in "\n\t" or c.isprintable() else "\ufffd" for c in text)


HELP = "/reset clears the conversation, /exit (or Ctrl-D) quits, Ctrl-C stops an answer"


def run_chat(model, tokenizer, template: str, sampling, system: str = "", out=None) -> None:
    """The REPL: read a line, stream the answer, keep the history. Returns on /exit or end of input."""
    from .streaming import ContextTooLong, context_limit, stream_generate

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    out = out or sys.stdout
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    limit = context_limit(model, tokenizer)
    out.write(f"chat ({HELP})\n")
    # Ctrl-C at the prompt must reach input() as KeyboardInterrupt even when the chat was started with SIGINT
    # ignored (a parent that ignores it passes that on: pytest-xdist's workers, some launchers)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(type /exit to quit)\n")
            continue
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return
        if cmd == "/reset":
            messages = list(start)
            out.write("(conversation cleared)\n")
            continue
        if cmd.startswith("/"):
            out.write(f"unknown command {cmd.split()[0]}; {HELP}\n")
            continue
        room = None if limit is None else max(limit - min(sampling.max_new_tokens, limit // 2), 1)
        messages, dropped = fit_history(messages + [{"role": "user", "content": line}], template, tokenizer, room)
        if dropped:
            out.write(f"(the {dropped} oldest exchange(s) dropped to fit the model's context)\n")
        answer = _answer(model, tokenizer, prompt_ids_from_messages(messages, template, tokenizer), sampling, out,
                         stream_generate, ContextTooLong)
        if answer is None:
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": answer})


def _answer(model, tokenizer, ids, sampling, out, stream_generate, ContextTooLong):
    """Stream one answer to `out`; Ctrl-C (SIGINT) stops it after the current token. None if it could not start."""
    stop = threading.Event()
    old = signal.signal(signal.SIGINT, lambda *a: stop.set())
    try:
        result = stream_generate(model, tokenizer, ids, sampling,
                                 on_text=lambda piece: (out.write(printable(piece)), out.flush()),
                                 cancelled=stop.is_set, lstrip=True)
    except ContextTooLong as e:
        out.write(f"(too long: {e}; /reset to start over)\n")
        return None
    finally:
        signal.signal(signal.SIGINT, old)
    out.write(" [stopped]\n" if result.finish_reason == "cancelled" else "\n")
    out.flush()
    return result.text
