"""The embedded default job: no network, about a minute on two CPU cores.

It shows what LoRA fine-tuning changes, on a model small enough to watch:

1. build a tiny random Llama and a BPE tokenizer on the bundled Chinese sample;
2. set 20 of the sample's single-turn records aside for LoRA; the rest are stand-in pre-training data;
3. stand-in pre-training: a full fine-tune of the random model on the rest (never on the 20);
4. BEFORE: the base model answers one of the 20 instructions; its loss on the 20 is measured;
5. LoRA fine-tune the base on the 20 records, and merge the adapter into it;
6. AFTER: the merged model answers the same instruction; a table sets loss and ROUGE-L side by side.

The answered instruction is one of LoRA's training records: the demo shows that LoRA learns
its data (memorisation), not that 20 records can teach a model to generalise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

from .config import TrainConfig
from .data import SAMPLE_DATA

# Measured (see the commit messages): with a 3000-token BPE no answer's tokens all occur in other
# records and LoRA does not learn its 20 (ROUGE-L 23 after 300 steps); with 600 tokens, 600
# pre-training steps and 100 LoRA steps it writes them back (loss 8.64 -> 0.047). 300 or 400
# pre-training steps leave a weaker base (loss after LoRA 0.26 or more).
MODEL = {"vocab_size": 600, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "intermediate_size": 256}
LORA_RECORDS = 20
PRETRAIN = {"method": "full", "lr": 3e-3}
LORA = {"method": "lora", "lr": 1e-2, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
MAX_NEW_TOKENS = 160


def _say(msg):
    print(f"\n== {msg}", flush=True)


def _pick_lora_records(records: list[dict], tokenizer, n: int) -> list[int]:
    """The first `n` single-turn records whose every answer token also occurs in an answer left for pre-training.

    A real base model has learned every token of its vocabulary; this tiny one learns only the
    tokens its stand-in pre-training asks it to write, and LoRA cannot teach it new ones."""
    answers = [set(tokenizer(r["output"], add_special_tokens=False).input_ids) for r in records]
    left = Counter(t for a in answers for t in a)
    chosen = []
    for i, (record, tokens) in enumerate(zip(records, answers)):
        if record.get("history") or record.get("system") or len(chosen) == n:
            continue
        left.subtract(tokens)
        if all(left[t] > 0 for t in tokens):
            chosen.append(i)
        else:
            left.update(tokens)
    return chosen


def _split_sample(tokenizer_dir: str, data_dir: str) -> tuple[str, str, list[dict]]:
    """Write the pre-training and LoRA parts of the sample; returns their paths and the LoRA records."""
    from .data.formats import load_records
    from .models.load import load_tokenizer

    records = load_records(SAMPLE_DATA).records
    picked = set(_pick_lora_records(records, load_tokenizer(tokenizer_dir), LORA_RECORDS))
    parts = {"pretrain.json": [r for i, r in enumerate(records) if i not in picked],
             "lora.json": [r for i, r in enumerate(records) if i in picked]}
    os.makedirs(data_dir, exist_ok=True)
    for name, part in parts.items():
        with open(os.path.join(data_dir, name), "w", encoding="utf-8") as f:
            json.dump(part, f, ensure_ascii=False, indent=1)
    print(f"{len(parts['pretrain.json'])} records for pre-training, {len(picked)} for LoRA, in {data_dir}/")
    return os.path.join(data_dir, "pretrain.json"), os.path.join(data_dir, "lora.json"), parts["lora.json"]


def _train(model: str, data: str, output_dir: str, steps: int, settings: dict):
    from .train import train

    return train(TrainConfig(model=model, data=data, output_dir=output_dir, max_steps=steps, save_steps=steps,
                             batch_size=8, max_length=256, seed=0, **settings))


def _measure(model_path: str, records: list[dict], shown: dict) -> dict:
    """Loss on `records` (response tokens) and the greedy answer to `shown`, with its ROUGE-L."""
    from .infer import generate, load_for_inference
    from .evaluate import response_loss
    from .evaluate.text_metrics import rouge

    model, tok, _ = load_for_inference(model_path)
    loss = response_loss(model, tok, records, max_length=256)["loss"]
    from .infer.sampling import Sampling

    answer = generate(model, tok, [shown], sampling=Sampling(MAX_NEW_TOKENS))[0]
    return {"loss": loss, "answer": answer, "rouge_l": rouge(answer, shown["output"])["rouge-l"]}


def _report(shown: dict, before: dict, after: dict, result) -> None:
    n = LORA_RECORDS
    print(f"instruction:  {shown['instruction']}\nreference:    {shown['output']}\n"
          f"before LoRA:  {before['answer']}\nafter LoRA:   {after['answer']}")
    print(f"\n{'':44}{'before LoRA':>12}{'after LoRA':>12}")
    print(f"{f'loss on the {n} LoRA training records':44}{before['loss']:12.3f}{after['loss']:12.3f}")
    print(f"{'ROUGE-L of the answer above (0-100)':44}{before['rouge_l']:12.1f}{after['rouge_l']:12.1f}")
    print(f"\nLoRA trained {result.trainable_params:,} of {result.total_params:,} parameters for "
          f"{result.steps} steps.\n"
          f"The instruction is one of its {n} training records: learning them by heart shows that fine-tuning\n"
          f"works; {n} records cannot teach a model to answer new questions.")


def run_demo(output_dir: str = "runs/demo", steps: int = 100, pretrain_steps: int = 600) -> dict:
    from .infer import merge
    from .models.tiny import init_model

    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    random_base, base, adapter, merged = (os.path.join(output_dir, n) for n in ("random", "base", "lora", "merged"))

    _say("1/6 build a tiny random Llama and train a BPE tokenizer on the bundled Chinese sample")
    init_model("llama", random_base, **MODEL)

    _say(f"2/6 set {LORA_RECORDS} single-turn records aside for LoRA (every answer token also occurs elsewhere)")
    pretrain_data, lora_data, lora_records = _split_sample(random_base, os.path.join(output_dir, "data"))
    shown = lora_records[0]

    # LoRA adapts a *pretrained* model: on a random one its frozen output layer caps what it can learn.
    _say(f"3/6 stand-in for pre-training: a full fine-tune for {pretrain_steps} steps on the other records")
    _train(random_base, pretrain_data, base, pretrain_steps, PRETRAIN)

    _say(f"4/6 BEFORE LoRA: the base model has never seen the {LORA_RECORDS} LoRA records")
    before = _measure(base, lora_records, shown)
    print(f"instruction: {shown['instruction']}\nbase model:  {before['answer']}")

    _say(f"5/6 fine-tune the base with LoRA for {steps} steps on {lora_data}, then merge the adapter")
    result = _train(base, lora_data, adapter, steps, LORA)
    merge(base, adapter, merged)

    _say("6/6 AFTER LoRA: the merged model answers the same instruction")
    after = _measure(merged, lora_records, shown)
    _report(shown, before, after, result)
    print(f"\ndone: the base, adapter and merged model under {output_dir}/")
    return {"before": before, "after": after}
