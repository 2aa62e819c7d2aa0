"""Plain texts (no instruction, no template): what forgetting is measured on.

    a .txt file                        each paragraph (lines up to a blank line) is one text
    a .json / .jsonl of {"text": ...}  each record's text
    alpaca records (any format)        each record's instruction, input and output, one per line, as one text
"""

from __future__ import annotations

import os

from ..errors import UserError

TEXT_SUFFIXES = (".txt",)


def _text_records(records) -> bool:
    """Records of plain text: objects with a "text" field and no instruction or conversation."""
    first = records[0] if records else None
    return isinstance(first, dict) and "text" in first and not {"instruction", "conversations", "messages"} & set(first)


def is_text_file(path: str, encoding: str | None = None) -> bool:
    """True for a .txt file and for JSON / JSON Lines records of {"text": ...}; False for alpaca records."""
    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_SUFFIXES:
        return True
    if ext not in (".json", ".jsonl", ".ndjson") or not os.path.isfile(path):
        return False
    from .formats import read_raw

    return _text_records(read_raw(path, encoding))


def _paragraphs(text: str) -> list[str]:
    out, lines = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            lines.append(line.rstrip())
        elif lines:
            out.append("\n".join(lines).strip())
            lines = []
    return out


def _record_texts(path: str, records) -> list[str]:
    out = []
    for i, rec in enumerate(records):
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path}: record {i}: expected an object with a string 'text', found "
                            f"{type(text if isinstance(rec, dict) else rec).__name__}")
        if text.strip():
            out.append(text.strip())
    return out


def load_texts(path: str, encoding: str | None = None) -> list[str]:
    """The texts of `path` (see the module's docstring); empty texts left out, none at all refused."""
    from .formats import load_records, read_raw
    from .textfile import check_path, read_text

    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_SUFFIXES:
        check_path(path)
        texts = _paragraphs(read_text(path, encoding))
    else:
        raw = read_raw(path, encoding)
        if _text_records(raw):
            texts = _record_texts(path, raw)
        else:
            texts = ["\n".join(p for p in (r["instruction"], r["input"], r["output"]) if p.strip())
                     for r in load_records(path, encoding=encoding).records]
    if not texts:
        raise UserError(f"{path}: no text in it; give paragraphs of text (.txt), records of {{\"text\": ...}} "
                        "(.json / .jsonl) or alpaca records")
    return texts
