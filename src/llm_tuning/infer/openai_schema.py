"""The OpenAI request bodies the server accepts (field names as OpenAI's and vLLM's), and the fields it refuses."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .logprobs import MAX_LOGPROBS

MAX_N = 128  # answers per prompt (OpenAI's bound)


def _unicode(v: str) -> str:
    """JSON may carry a lone surrogate (\\ud800), which is no character: the tokenizer would fail on it."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate such as \\ud800)") from None
    return v


Text = Annotated[str, AfterValidator(_unicode)]  # every string the server reads from a request

# Fields of OpenAI's and vLLM's requests that ask for something this server does not do, with the values that ask
# for nothing (null always does). A request that asks is refused with 400 naming the field, never half-served;
# keys no API defines stay ignored, as the spec's clients send extras.
_NOT_IMPLEMENTED = {
    "logit_bias": ({},), "presence_penalty": (0,), "frequency_penalty": (0,), "top_k": (0, -1), "min_p": (0,),
    "min_tokens": (0,), "best_of": (1,), "ignore_eos": (False,), "stop_token_ids": ([],), "bad_words": ([],),
    "include_stop_str_in_output": (False,), "skip_special_tokens": (True,), "allowed_token_ids": (),
    "logits_processors": ([],), "prompt_logprobs": (), "truncate_prompt_tokens": (), "use_beam_search": (False,),
    "length_penalty": (1,), "return_tokens_as_token_ids": (False,), "response_format": ({"type": "text"},),
    "structured_outputs": (), "guided_json": (), "guided_regex": (), "guided_choice": (), "guided_grammar": (),
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
}
_NOT_IMPLEMENTED_COMPLETIONS = {"suffix": ("",), "prompt_embeds": ()}
_NOT_IMPLEMENTED_CHAT = {
    "audio": (), "modalities": (["text"],), "prediction": (), "reasoning_effort": (), "echo": (False,),
    "chat_template": (), "chat_template_kwargs": ({},), "add_generation_prompt": (True,),
    "continue_final_message": (False,), "documents": (),
}


def _same(value, neutral) -> bool:
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral  # true is not 1 here
    return value == neutral


def _refuse(data, fields: dict):
    if isinstance(data, dict):
        for name, neutral in fields.items():
            value = data.get(name)
            if value is not None and not any(_same(value, n) for n in neutral):
                raise PydanticCustomError("unsupported_parameter", "not supported by this server (leave it out)",
                                          {"param": name})
    return data


def _refused(param: str, message: str):
    return PydanticCustomError("invalid_value", message, {"param": param})


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # keys no API defines (user, store, metadata, ...) are ignored

    model: Text
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Optional[Union[Text, list[Text]]] = None
    seed: Optional[int] = Field(None, ge=-2**63, lt=2**64)  # what torch's generator takes
    # extensions, as vLLM takes them (the openai client passes them in extra_body): loop guards, off by default
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    stream: bool = False
    stream_options: Optional[dict] = None
    n: int = Field(1, ge=1, le=MAX_N)

    @model_validator(mode="before")
    @classmethod
    def _not_implemented(cls, data):
        return _refuse(data, _NOT_IMPLEMENTED)

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise _refused("stream_options", "only with stream: true")
        return self

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
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="before")
    @classmethod
    def _not_implemented_in_chat(cls, data):
        return _refuse(data, _NOT_IMPLEMENTED_CHAT)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise _refused("top_logprobs", "needs logprobs: true")
        return self

    def answer_length(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def top_k(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for (None: not asked)."""
        return (self.top_logprobs or 0) if self.logprobs else None


Ids = list[StrictInt]  # StrictInt: "5" and true are not token ids


class CompletionRequest(_Request):
    prompt: Union[Ids, list[Ids], Text, list[Text]]  # vLLM's four forms; ids are taken as they are
    max_tokens: Optional[int] = Field(None, ge=0)  # 0 only with echo: the prompt's log-probabilities alone
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @model_validator(mode="before")
    @classmethod
    def _not_implemented_in_completions(cls, data):
        return _refuse(data, _NOT_IMPLEMENTED_COMPLETIONS)

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v):
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("empty: send a string, a list of strings, token ids or a list of token-id lists")
        return v

    @model_validator(mode="after")
    def _nothing_to_do(self):
        if self.max_tokens == 0 and not self.echo:
            raise _refused("max_tokens", "0 only with echo: true")
        return self

    def answer_length(self) -> int | None:
        return self.max_tokens

    def top_k(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list:
        """Each prompt: a string, or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class TokenizeRequest(BaseModel):
    """POST /tokenize as vLLM takes it: a `prompt`, or chat `messages` (their ids are the ones the chat endpoint
    feeds the model, the adapter's template applied)."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[Text] = None
    prompt: Optional[Text] = None
    messages: Optional[list[Message]] = Field(None, min_length=1)
    add_special_tokens: bool = True  # prompts only: bos as the completions endpoint adds it
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="before")
    @classmethod
    def _not_implemented(cls, data):
        return _refuse(data, {"add_generation_prompt": (True,), "continue_final_message": (False,),
                              "chat_template": (), "chat_template_kwargs": ({},), "tools": ([],)})

    @model_validator(mode="after")
    def _one_of(self):
        if (self.prompt is None) == (self.messages is None):
            raise _refused("prompt", "send either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[Text] = None
    tokens: Ids
