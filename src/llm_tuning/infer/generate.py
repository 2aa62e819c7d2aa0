"""Answers for alpaca records: batched greedy or sampled decoding."""

from __future__ import annotations


def generate(model, tokenizer, records: list[dict], template: str = "default", max_new_tokens: int = 128,
             batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Answers for alpaca records (the `output` field is ignored). Greedy by default; stops at eos."""
    import torch

    from ..data.templates import format_prompt
    from ..data.tokenize import encode_prompt
    from ..models.params import is_prompt_learning

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    if is_prompt_learning(model):
        return [_generate_without_cache(model, tokenizer, r, template, max_new_tokens, do_sample, temperature, top_p)
                for r in records]
    answers = []
    for i in range(0, len(records), batch_size):
        prompts = [encode_prompt(tokenizer, format_prompt(r, template)) for r in records[i:i + batch_size]]
        width = max(len(p) for p in prompts)
        # Left padding for generation, so every prompt ends where its answer starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        gen_kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=pad)
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, **gen_kwargs)
        for row in out[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def _generate_without_cache(model, tokenizer, record, template, max_new_tokens, do_sample, temperature, top_p):
    """Decoding for prompt tuning, P-tuning and prefix tuning: one record at a time, a full forward per token.

    With transformers 5.24 and PEFT 0.21, `generate` on these models is wrong: it hands the model its own
    (empty) cache under the new `cache` name, so the prefix PEFT puts under `past_key_values` is silently
    ignored (a prefix adapter generated exactly what the base model generates, seen on stories260K); prompt
    tuning crashes on a mask shape; and with left padding PEFT drops position ids. The plain forward applies
    the virtual tokens correctly, so we decode with it: slower (no KV cache), but the tokens are the model's.
    tests/test_methods.py::test_generation_follows_the_adapter checks this for every method."""
    import torch

    from ..data.templates import format_prompt
    from ..data.tokenize import encode_prompt

    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, format_prompt(record, template))], device=device)
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
            if do_sample:
                probs = torch.softmax(logits / max(temperature, 1e-5), -1)
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < top_p
                nxt = order[keep][torch.multinomial(sorted_p[keep] / sorted_p[keep].sum(), 1)]
            else:
                nxt = logits.argmax().view(1)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if int(nxt) == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()
