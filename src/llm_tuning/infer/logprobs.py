"""Token log-probabilities as the OpenAI / vLLM APIs report them: each token's text, its log-probability under the
model, and the k most likely tokens at its place.

The figures are the model's own distribution (log-softmax of the raw logits: before temperature, top-p or the
loop guards, as vLLM's default `raw_logprobs`), from the same forward passes that decode the answer
(infer.generate.stream_ids); a prompt's come from the forward that starts decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LOGPROBS = 20  # the most alternatives a request may ask for per token (vLLM's --max-logprobs default)
FLOOR = -9999.0  # -inf as OpenAI and vLLM write it in JSON


@dataclass
class TokenLogprob:
    id: int
    text: str  # the token's text where it stands (see TokenTexts)
    logprob: float | None  # None: a prompt's first token, which nothing predicts
    top: list[tuple[str, float]] | None = None  # the k most likely (text, log-probability), most likely first


class TokenTexts:
    """Each token's text where it stands, as vLLM's incremental detokenisation finds it: the difference the token
    makes to the decode of the few tokens before it. So a SentencePiece word keeps its leading space (" upon"), a
    token that ends inside a multi-byte character reads "" and the one that completes it carries the character,
    and special tokens read as themselves ("</s>"). `alternative(id)`: the text another token would have in the
    same place."""

    def __init__(self, tokenizer, context: list[int] = ()):
        self.tok = tokenizer
        self.ids = list(context)
        self.start = max(0, len(self.ids) - 4)  # ids[start:read] were decoded last; ids[read:] wait for a character
        self.read = len(self.ids)

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def _before(self) -> str:
        return self._decode(self.ids[self.start:self.read])

    def alternative(self, token_id: int, before: str | None = None) -> str:
        before = self._before() if before is None else before
        now = self._decode(self.ids[self.start:] + [token_id])
        return now[len(before):] if now.startswith(before) else self._decode([token_id])

    def add(self, token_id: int, before: str | None = None) -> str:
        before = self._before() if before is None else before
        self.ids.append(token_id)
        now = self._decode(self.ids[self.start:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.start, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""


def _rows(logits, ids, k: int):
    """(log-probability of ids[i] in row i, the k most likely (id, log-probability) of row i) for every row."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(-1, torch.as_tensor(ids, device=lp.device).view(-1, 1)).view(-1).tolist()
    if not k:
        return chosen, [[] for _ in chosen]
    values, index = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(index.tolist(), values.tolist())]


def _entry(texts: TokenTexts, token_id: int, logprob: float, top: list) -> TokenLogprob:
    before = texts._before()
    alternatives = [(texts.alternative(i, before), max(v, FLOOR)) for i, v in top]
    return TokenLogprob(token_id, texts.add(token_id, before), max(logprob, FLOOR), alternatives)


def prompt_logprobs(tokenizer, ids: list[int], logits, k: int) -> list[TokenLogprob]:
    """The prompt's tokens with their log-probabilities: row i of `logits` ([len(ids), vocab], raw) predicts
    ids[i + 1]; the first token has none."""
    texts = TokenTexts(tokenizer)
    first = TokenLogprob(ids[0], texts.add(ids[0]), None, None)
    chosen, tops = _rows(logits[:-1], ids[1:], k) if len(ids) > 1 else ([], [])
    return [first] + [_entry(texts, t, c, top) for t, c, top in zip(ids[1:], chosen, tops)]


class AnswerLogprobs:
    """The log-probabilities of one answer's tokens as they are decoded, their texts read after the prompt's."""

    def __init__(self, tokenizer, prompt_ids: list[int], k: int):
        self.texts, self.k = TokenTexts(tokenizer, prompt_ids), k

    def add(self, token_id: int, logits_row) -> TokenLogprob:
        chosen, tops = _rows(logits_row.view(1, -1), [token_id], self.k)
        return _entry(self.texts, token_id, chosen[0], tops[0])
