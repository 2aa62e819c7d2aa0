"""Helpers several test files share (and benchmarks/generation_speed.py: the reference decoding)."""

import torch

from llm_tuning.config import TrainConfig
from llm_tuning.data.collate import make_collator
from llm_tuning.data.tokenize import encode_records
from llm_tuning.methods import VARIANTS as METHOD_VARIANTS

# ---------------------------------------------------------------- the reference decoding


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


# ---------------------------------------------------------------- every method on the tiny models

NVT, ENC, R = 4, 32, 4  # virtual tokens, prompt-encoder width, LoRA rank for the tiny models
VR, OB = 16, 16  # VeRA rank, OFT block size for the tiny models

# Every variant the project names (methods.VARIANTS); the LoRA family without dropout so that outputs are
# deterministic here.
LORA_FAMILY = {"lora", "dora", "rslora", "pissa"}
VARIANTS = {name: dict(kw, **({"lora_dropout": 0.0} if kw["method"] in LORA_FAMILY else {}))
            for name, kw in METHOD_VARIANTS.items()}


def make_cfg(model_path, variant):
    kw = dict(VARIANTS[variant])
    return TrainConfig(model=model_path, data="-", output_dir="-", num_virtual_tokens=NVT, encoder_hidden_size=ENC,
                       lora_r=R, lora_alpha=8, prompt_text="下面是一条指令", vera_r=VR, oft_block_size=OB, **kw)


def fixed_batch(tokenizer, records):
    enc = encode_records(tokenizer, records[:4], max_length=64)
    feats = [{"input_ids": i, "labels": l} for i, l in zip(enc.input_ids, enc.labels)]
    return make_collator(tokenizer)(feats)


def int8_inputs(loss) -> dict:
    """{storage address: bytes} of the distinct tensors bitsandbytes' 8-bit matmuls hold on their autograd nodes
    (ctx.A on the CPU, ctx.tensors on CUDA) reachable from the loss: what the forward leaves for the backward
    outside autograd's saved tensors."""
    seen, stack, kept = set(), [loss.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if "MatMul8bit" in type(node).__name__:
            for t in [getattr(node, "A", None), *(getattr(node, "tensors", None) or ())]:
                if isinstance(t, torch.Tensor):
                    kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(f for f, _ in node.next_functions)
    return kept
