"""The OpenAI request bodies the server accepts, and the shapes of its answers and errors."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _unicode(v: str) -> str:
    """JSON may carry a lone surrogate (\\ud800), which is no character: the tokenizer would fail on it."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate such as \\ud800)") from None
    return v


Text = Annotated[str, AfterValidator(_unicode)]  # every string the server reads from a request


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields we do not implement (logprobs, user, ...) are ignored

    model: Text
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Optional[Union[Text, list[Text]]] = None
    seed: Optional[int] = Field(None, ge=-2**63, lt=2**64)  # what torch's generator takes
    # extensions, as vLLM takes them (the openai client passes them in extra_body): loop guards, off by default
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    stream: bool = False
    stream_options: Optional[dict] = None
    n: int = Field(1, ge=1, le=1, description="one answer per request")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class _TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[Text, list[_TextPart]]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: Union[Text, list[Text]]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request (a string, or a list of one string)")
            v = v[0]
        return v


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(c) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def finish_reason(c) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def chat_response(rid: str, model: str, c) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": finish_reason(c)}], "usage": usage(c)}


def completion_response(rid: str, model: str, c) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": c.text, "logprobs": None, "finish_reason": finish_reason(c)}],
            "usage": usage(c)}


def chunk(rid: str, model: str, chat: bool, text: str | None = None, finish: str | None = None,
          role: bool = False, usage_of=None) -> dict:
    """One streamed event: a piece of text, the finish reason, or (choices empty) the usage counts."""
    if chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [] if usage_of is not None else [choice]}
    if usage_of is not None:
        body["usage"] = usage(usage_of)
    return body
