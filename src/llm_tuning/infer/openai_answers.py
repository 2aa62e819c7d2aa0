"""The shapes of the server's answers: OpenAI's completion and chat objects, their streamed chunks, and the
log-probabilities in each API's form (as vLLM writes them).

A request's answers are `rows`: one streaming.Completion per prompt and sample, prompt-major (prompt p's sample j
is choice p * n + j, as vLLM numbers them)."""

from __future__ import annotations

import time
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(rows: list, n: int) -> dict:
    """Each prompt's tokens counted once, every answer's tokens (virtual tokens and the final eos not counted)."""
    prompt = sum(c.prompt_tokens for c in rows[::n])
    completion = sum(c.completion_tokens for c in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(c) -> str:
    return "length" if c.finish_reason == "length" else "stop"


# ---------------------------------------------------------------- log-probabilities

def completion_logprobs(entries: list, offset: int = 0) -> dict:
    """The completions API's {tokens, token_logprobs, top_logprobs, text_offset}: top_logprobs maps the token
    itself, then the k most likely, to their log-probabilities (up to k + 1 entries; a prompt's first token has
    null); text_offset counts the token texts from `offset` (as vLLM's)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        top = None
        if e.logprob is not None:
            top = {e.text: e.logprob}
            for text, value in e.top or ():
                top.setdefault(text, value)
        out["tokens"].append(e.text)
        out["token_logprobs"].append(e.logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(e.text)
    return out


def _chat_token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(entries: list) -> dict:
    """The chat API's {"content": [{token, logprob, bytes, top_logprobs: [k most likely]}]}."""
    return {"content": [dict(_chat_token(e.text, e.logprob), top_logprobs=[_chat_token(t, v) for t, v in e.top or ()])
                        for e in entries]}


# ---------------------------------------------------------------- whole answers

def completion_response(rid: str, model: str, rows: list, n: int, echoed: list[str] | None,
                        logprobs: bool) -> dict:
    """`echoed`: each prompt's text when the request echoes (its tokens' log-probabilities lead too)."""
    choices = []
    for i, c in enumerate(rows):
        lead = echoed[i // n] if echoed is not None else ""
        scores = None
        if logprobs:
            scores = completion_logprobs((c.prompt_logprobs if echoed is not None else []) + c.logprobs)
        choices.append({"index": i, "text": lead + c.text, "logprobs": scores, "finish_reason": finish_reason(c)})
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(rows, n)}


def chat_response(rid: str, model: str, rows: list, n: int, logprobs: bool) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.logprobs) if logprobs else None, "finish_reason": finish_reason(c)}
               for i, c in enumerate(rows)]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(rows, n)}


# ---------------------------------------------------------------- streamed chunks

def chunk(rid: str, model: str, chat: bool, index: int = 0, text: str | None = None, finish: str | None = None,
          role: bool = False, logprobs: dict | None = None, usage_of: dict | None = None) -> dict:
    """One streamed event of choice `index`: a piece of text (with its tokens' log-probabilities), the finish
    reason, the chat role first, or (choices empty) the usage counts."""
    if chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [] if usage_of is not None else [choice]}
    if usage_of is not None:
        body["usage"] = usage_of
    return body
