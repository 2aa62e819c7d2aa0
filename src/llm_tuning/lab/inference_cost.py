"""What an adapter costs at inference: generation tokens/s with the adapter as trained (unmerged: prompt and
prefix methods add tokens to every request, LoRA adds products until merged) and, for a method that merges,
folded into the base, each against the base model timed in the same rounds of the same process.

The same measurement for every run and the base (infer/speed.py): the prompts of the first PROMPTS held-out
records in one batch, greedy, NEW_TOKENS new tokens each, the best of REPEATS rounds after a warm-up. The
figure to compare is the ratio to the base: the tokens/s themselves move with the machine and its load."""

from __future__ import annotations

from ..errors import UserError

PROMPTS, NEW_TOKENS, REPEATS = 4, 32, 5


def _prompts(tokenizer, heldout, template) -> list[list[int]]:
    from ..data.tokenize import prompt_ids

    return [prompt_ids(tokenizer, r, template) for r in heldout[:PROMPTS]]


def base_speed(model, tokenizer, heldout, template) -> dict:
    """The base model's own generation tokens/s (the base row's figure)."""
    from ..infer.speed import tokens_per_s

    s = tokens_per_s({"base": model}, _prompts(tokenizer, heldout, template), tokenizer.pad_token_id, NEW_TOKENS,
                     REPEATS)
    return {"gen_tokens_per_s": s["base"]}


def adapter_speed(model, tokenizer, method_name: str, base_path: str, heldout, template) -> dict:
    """Tokens/s of `model` (the base with its adapter) and, where the method merges, of the merged model, each
    with its ratio to the base's in the same rounds. Merging changes `model`: call this after the other scores."""
    from ..infer import load_for_inference
    from ..infer.speed import tokens_per_s
    from ..methods import get_method

    prompts, pad = _prompts(tokenizer, heldout, template), tokenizer.pad_token_id
    base, _, _ = load_for_inference(base_path, None)
    s = tokens_per_s({"base": base, "adapter": model}, prompts, pad, NEW_TOKENS, REPEATS)
    out = {"gen_tokens_per_s": s["adapter"], "gen_tokens_per_s_base": s["base"],
           "gen_speed_ratio": s["adapter"] / s["base"]}
    method = get_method(method_name)
    if method.mergeable:
        try:
            merged = method.merge(model)
        except UserError:  # this model cannot hold the adapter merged (BitFit's added biases): no merged figure
            return out
        s = tokens_per_s({"base": base, "merged": merged}, prompts, pad, NEW_TOKENS, REPEATS)
        out.update(gen_tokens_per_s_merged=s["merged"], gen_speed_ratio_merged=s["merged"] / s["base"])
    return out
