"""POST /tokenize, POST /detokenize and GET /version, in vLLM's shapes (at the root, not under /v1)."""

from __future__ import annotations

from ..errors import UserError
from . import openai_schema as S
from .adapters import BASE
from .api_common import as_api_error, check_token_ids, off_the_loop, served_model, vocabulary_size
from .streaming import context_limit


def tokenize_routes(app, adapters):
    tok = adapters.tokenizer

    @app.post("/tokenize")
    async def tokenize(req: S.TokenizeRequest):
        """The ids the completions endpoint (a prompt) or the chat endpoint (messages) would feed the model."""
        served = served_model(adapters, req.model or BASE)

        def encode():
            from ..data.tokenize import encode_prompt
            from .chat import prompt_ids_from_messages

            if req.messages is not None:
                return prompt_ids_from_messages([m.as_dict() for m in req.messages], served.template, tok)
            if req.add_special_tokens:
                return encode_prompt(tok, req.prompt)
            return tok(req.prompt, add_special_tokens=False)["input_ids"]

        try:
            ids = await off_the_loop(encode)
        except UserError as e:  # a conversation that does not end with the user's turn
            raise as_api_error(e, "messages") from None
        return {"count": len(ids), "max_model_len": context_limit(served.model, tok), "tokens": ids,
                "token_strs": tok.convert_ids_to_tokens(ids) if req.return_token_strs else None}

    @app.post("/detokenize")
    async def detokenize(req: S.DetokenizeRequest):
        served = served_model(adapters, req.model or BASE)
        check_token_ids(req.tokens, vocabulary_size(served.model), "tokens")
        return {"prompt": await off_the_loop(lambda: tok.decode(req.tokens))}

    @app.get("/version")
    async def version():
        from .. import __version__

        return {"version": __version__}
