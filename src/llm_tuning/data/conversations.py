"""Multi-turn records: every accepted form becomes one normalised record, and a record becomes its turns.

Accepted forms (LLaMA-Factory's two):
- alpaca with `system` (a string) and `history` ([[user, assistant], ...], the exchanges before this one):
  {"instruction", "input", "output", "system", "history"};
- sharegpt: `conversations` with `from`/`value` (human, gpt, system) or `messages` with `role`/`content`
  (user, assistant, system), optionally a top-level `system`. A system turn may only come first; then user and
  assistant turns alternate, starting with the user and ending with the assistant.

The normalised record is the alpaca one: the last exchange is `instruction` / `output` (`input` ""), the
exchanges before it are `history`, and `system` leads. Single-turn records keep exactly their three fields, so
everything that reads `instruction` and `output` (scoring, reports, the tokenisation cache) sees them as before.
"""

from __future__ import annotations

from ..errors import UserError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMS = {"conversations": ("from", "value"), "messages": ("role", "content")}


def is_sharegpt(rec: dict) -> bool:
    return any(isinstance(rec.get(k), list) for k in FORMS) and "instruction" not in rec


def _system(rec: dict, where: str) -> str:
    system = rec.get("system")
    if system is None:
        return ""
    if not isinstance(system, str):
        raise UserError(f"{where}: 'system' must be a string, found {type(system).__name__}")
    return system


def from_sharegpt(rec: dict, where: str) -> dict:
    """A sharegpt record (`conversations` or `messages`) as the normalised alpaca record; UserError naming the turn."""
    key = next(k for k in FORMS if isinstance(rec.get(k), list))
    role_key, text_key = FORMS[key]
    system, pairs, expect, pending = _system(rec, where), [], "user", None
    for i, turn in enumerate(rec[key]):
        at = f"{where}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise UserError(f"{at}: expected an object with '{role_key}' and '{text_key}', found {type(turn).__name__}")
        role = ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            names = "human, gpt, system" if key == "conversations" else "user, assistant, system"
            raise UserError(f"{at}: '{role_key}' is {turn.get(role_key)!r}; expected one of {names}")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise UserError(f"{at}: '{text_key}' must be a string, found {type(text).__name__}")
        if not text.strip():
            raise UserError(f"{at}: '{text_key}' is empty")
        if role == "system":
            if i != 0:
                raise UserError(f"{at}: a system turn may only come first")
            system = "\n".join(s for s in (system, text) if s)
            continue
        if role != expect:
            raise UserError(f"{at}: a {turn[role_key]!r} turn where the {'user' if expect == 'user' else 'assistant'}"
                            f"'s was expected; user and assistant turns must alternate, starting with the user")
        if role == "user":
            pending = text
        else:
            pairs.append([pending, text])
        expect = "assistant" if role == "user" else "user"
    if expect == "assistant":
        raise UserError(f"{where}: {key}[{len(rec[key]) - 1}] is a user turn with no answer; the last turn must be "
                        "the assistant's")
    if not pairs:
        raise UserError(f"{where}: '{key}' holds no user turn answered by the assistant")
    return _normalised(pairs[-1][0], "", pairs[-1][1], system, pairs[:-1])


def alpaca_extras(rec: dict, where: str) -> dict:
    """The `system` and `history` of an alpaca record, checked ({} when it has neither)."""
    out = {}
    system = _system(rec, where)
    if system:
        out["system"] = system
    history = rec.get("history")
    if history is None:
        return out
    if not isinstance(history, list):
        raise UserError(f"{where}: 'history' must be a list of [user, assistant] pairs, found {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UserError(f"{where}: history[{i}] must be a [user, assistant] pair of strings, found {pair!r:.60}")
        if not all(x.strip() for x in pair):
            raise UserError(f"{where}: history[{i}] has an empty {'user' if not pair[0].strip() else 'assistant'} turn")
    if history:
        out["history"] = [list(p) for p in history]
    return out


def _normalised(instruction: str, input: str, output: str, system: str, history: list) -> dict:
    rec = {"instruction": instruction, "input": input, "output": output}
    if system:
        rec["system"] = system
    if history:
        rec["history"] = [list(p) for p in history]
    return rec


def turns(record: dict) -> tuple[str, list[tuple[str, str | None]]]:
    """(system, [(user, assistant), ...]): the history, then this record's exchange, the instruction joined with
    its input as the seed's template does ("\\n".join(...).strip()). An empty `output` gives an open last turn
    (assistant None): the prompt for generating it."""
    user = "\n".join([record["instruction"], record.get("input") or ""]).strip()
    pairs = [(u.strip(), a) for u, a in record.get("history") or []]
    pairs.append((user, record.get("output") or None))
    return record.get("system") or "", pairs


def from_messages(messages: list[dict]) -> tuple[str, list[tuple[str, str | None]]]:
    """OpenAI-style messages (role/content, ending with the user's) as (system, pairs) with an open last turn.
    System messages are joined; consecutive user messages are joined with a newline."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    pairs: list[tuple[str, str | None]] = []
    user: list[str] = []
    for m in messages:
        if m["role"] == "user":
            user.append(m["content"])
        elif m["role"] == "assistant":
            pairs.append(("\n".join(user).strip(), m["content"]))
            user = []
    pairs.append(("\n".join(user).strip(), None))
    return system, pairs
