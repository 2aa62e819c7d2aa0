"""Answers: batched, KV-cached greedy or sampled decoding for every method (prompt learning included).

One decoding loop serves every model. The prompts of a batch are left-padded, so each ends where its answer
starts; position ids follow the attention mask (a padded row's first real token is at the position it would
have alone). Prompt tuning and P-tuning: the virtual-token embeddings (PEFT's `get_prompt`) are computed once
and put before the input's embeddings, as PEFT's own forward does; prefix tuning: the prefix keys and values
(`get_prompt` again, one cache entry per layer) start the KV cache, and the input's positions start after
them. After that first forward every method decodes one token per step from the cache, through the base model.

Why not `model.generate`: with transformers 5.24 and PEFT 0.21 it is wrong for the prompt-learning methods
(see `generate_without_cache` in tests/helpers.py, the reference the tests and benchmarks/generation_speed.py
compare with).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator


def generate(model, tokenizer, records: list[dict], template: str = "default", sampling=None,
             batch_size: int = 8) -> list[str]:
    """Answers for records (the `output` field is ignored; `system` and `history` lead, as in training).
    `sampling`: a sampling.Sampling (default: greedy, the commands' default length); stops at eos."""
    return answer_ids(model, tokenizer, records, template, sampling, batch_size)[0]


def answer_ids(model, tokenizer, records: list[dict], template: str = "default", sampling=None,
               batch_size: int = 8, progress=None) -> tuple[list[str], list[list[int]]]:
    """generate()'s answers and the token ids each was decoded from (its eos included where the model ended it).
    progress: called with the number of answers of each batch once it is decoded."""
    from ..data.tokenize import prompt_ids
    from .sampling import Sampling

    s = sampling or Sampling()
    prompts = [prompt_ids(tokenizer, r, template) for r in records]
    outs = generate_ids(model, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, s.max_new_tokens, batch_size,
                        do_sample=not s.greedy, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                        penalties=s.penalties(), progress=progress)
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs], outs


def generate_ids(model, prompts: list[list[int]], eos_token_id: int, pad_token_id: int | None = None,
                 max_new_tokens: int = 128, batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, penalties=None, progress=None) -> list[list[int]]:
    """The new token ids of each prompt (its eos included when reached), in the prompts' order. Prompts of
    similar length share a batch (less padding); greedy answers do not depend on the batching."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        for step in stream_ids(model, [prompts[i] for i in rows], eos_token_id, pad_token_id, max_new_tokens,
                               do_sample=do_sample, temperature=temperature, top_p=top_p,
                               seed=None if seed is None else seed + start, penalties=penalties):
            for i, tok in zip(rows, step):
                if tok is not None:
                    out[i].append(tok)
        if progress:
            progress(len(rows))
    return out


def stream_ids(model, prompts: list[list[int]], eos_token_id: int, pad_token_id: int | None = None,
               max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None, penalties=None, scores: bool = False,
               on_prompt: Callable | None = None) -> Iterator[list[int | None]]:
    """Decode one batch, yielding at every step the new token of each prompt (None once a prompt has ended with
    eos). Stops when every prompt has ended or after `max_new_tokens`; closing the iterator stops decoding (a
    stop string, a client gone). `seed` makes sampling repeatable (a generator of its own, not torch's).
    `penalties`: transformers' logits processors against loops (sampling.Sampling.penalties), applied to each row's
    own tokens (its prompt and answer so far, not the padding).
    `scores`: yield (tokens, logits) instead, the logits [batch, vocab] each token was picked from, as the model
    gave them (before temperature, top-p and penalties). `on_prompt(rows)`: called once before the first token
    with the logits of every prompt position (rows[i]: [len(prompts[i]), vocab]; row j predicts token j + 1),
    from the same forward pass that starts decoding; with it, max_new_tokens 0 still runs that forward."""
    import torch

    if not prompts or (max_new_tokens <= 0 and on_prompt is None):
        return
    pad = eos_token_id if pad_token_id is None else pad_token_id
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    gen = None
    if do_sample and seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    with torch.no_grad():
        step = _Decoder(model)
        logits = step.start(ids, attn, every_position=on_prompt is not None)
        if on_prompt is not None:
            on_prompt([logits[i, width - len(p):] for i, p in enumerate(prompts)])
            logits = logits[:, -1].clone()  # not a view: the prompt's logits are freed now
        seen = [list(p) for p in prompts]
        for _ in range(max_new_tokens):
            raw = logits
            if penalties:
                logits = _penalised(logits, seen, penalties)
            nxt = _pick(logits, do_sample, temperature, top_p, gen)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens = [None if f else t for t, f in zip(nxt.tolist(), finished.tolist())]
            yield (tokens, raw) if scores else tokens
            for row, t in zip(seen, nxt.tolist()):
                row.append(t)
            finished |= nxt == eos_token_id
            if bool(finished.all()):
                return
            logits = step.next(nxt)


def _penalised(logits, seen, penalties):
    """Each row's next-token logits through the processors, given that row's tokens (a [1, n] history each)."""
    import torch

    rows = []
    for i, hist in enumerate(seen):
        row, ids = logits[i:i + 1].float(), torch.tensor([hist], device=logits.device)
        for proc in penalties:
            row = proc(ids, row)
        rows.append(row)
    return torch.cat(rows).to(logits.dtype)


class _Decoder:
    """The forward passes of decoding: `start` over the padded prompts, `next` for one new token per row."""

    def __init__(self, model):
        from ..models.params import is_prompt_learning

        self.peft = model if is_prompt_learning(model) else None
        self.kind = None
        if self.peft is not None:
            cfg = model.active_peft_config
            self.kind = "prefix" if str(cfg.peft_type).endswith("PREFIX_TUNING") else "prompt"
            self.virtual = cfg.num_virtual_tokens
        # The transformers model itself: for LoRA / IA3 its layers carry the (active) adapter, so PEFT's two
        # wrapper forwards add nothing but per-token overhead (~20 % of a step on a tiny model).
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.uses_positions = "position_ids" in params
        self.keep_arg = "logits_to_keep" in params

    def _forward(self, positions_kept: int | None = None, **kw):
        """The logits of the last position ([batch, vocab]), or of the last `positions_kept` ([batch, n, vocab])."""
        if self.uses_positions is False:
            kw.pop("position_ids")
        if self.keep_arg:
            kw["logits_to_keep"] = positions_kept or 1
        cache = kw.pop("cache")
        if cache is not None:
            kw[self.cache_arg] = cache
        out = self.model(use_cache=True, **kw)
        self.cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        if positions_kept:  # the input's positions only (prompt tuning's virtual tokens come first)
            return out.logits[:, -positions_kept:].float()
        return out.logits[:, -1].float()

    def start(self, ids, attn, every_position: bool = False):
        """The forward over the (left-padded) prompts: the logits of their last position, or with
        `every_position` of each of their positions ([batch, width, vocab])."""
        import torch

        batch = ids.shape[0]
        cache, embeds = None, None
        mask = attn
        if self.kind is not None:
            mask = torch.cat([torch.ones(batch, self.virtual, dtype=attn.dtype, device=attn.device), attn], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.kind == "prefix":
            cache = self.peft.get_prompt(batch, max_cache_len=ids.shape[1] + self.virtual)
            positions = positions[:, self.virtual:]
        elif self.kind == "prompt":
            words = self.peft.word_embeddings(ids)
            embeds = torch.cat([self.peft.get_prompt(batch_size=batch).to(words.dtype), words], dim=1)
        self.mask, self.last = mask, positions[:, -1]
        kept = ids.shape[1] if every_position else None
        if embeds is not None:
            return self._forward(kept, inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=None)
        return self._forward(kept, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)

    def next(self, tokens):
        import torch

        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.last = self.last + 1
        return self._forward(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.last[:, None],
                             cache=self.cache)


def _pick(logits, do_sample: bool, temperature: float, top_p: float, gen):
    """Next token per row: argmax, or a draw from the smallest set of tokens holding `top_p` of the probability."""
    import torch

    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / max(temperature, 1e-5), -1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    keep[:, 0] = True
    choice = torch.multinomial(sorted_p * keep, 1, generator=gen)
    return order.gather(-1, choice).squeeze(-1)
