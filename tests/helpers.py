"""Helpers several test files share (and benchmarks/generation_speed.py: the reference decoding)."""

import torch


def generate_without_cache(model, prompt: list[int], eos_token_id: int, max_new_tokens: int = 128,
                           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[int]:
    """The reference decoding: one prompt, a full forward of the PEFT model per token; returns the new token ids
    (eos included when reached).

    With transformers 5.24 and PEFT 0.21, `generate` on prompt-learning models is wrong: it hands the model its own
    (empty) cache under the new `cache` name, so the prefix PEFT puts under `past_key_values` is silently
    ignored (a prefix adapter generated exactly what the base model generates, seen on stories260K); prompt
    tuning crashes on a mask shape; and with left padding PEFT drops position ids. The plain forward applies
    the virtual tokens correctly, so this is what infer.generate's cached decoding must reproduce token for token
    (tests/test_generation.py)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)
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
            if int(nxt) == eos_token_id:
                break
    return ids[0, start:].tolist()
