"""The embedded default job: no network, about a minute on two CPU cores.

Build a tiny random Llama with a BPE tokenizer trained on the bundled Chinese sample,
fine-tune it with LoRA on that sample, merge the adapter, and answer one of the
sample's instructions with the merged model.
"""

from __future__ import annotations

import os
import shutil

from .config import TrainConfig
from .data import SAMPLE_DATA


def _say(msg):
    print(f"\n== {msg}", flush=True)


def run_demo(output_dir: str = "runs/demo", steps: int = 200):
    from .data.formats import load_records
    from .infer import generate, load_for_inference, merge
    from .models.tiny import init_model
    from .train import train

    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    random_base, base, adapter, merged = (os.path.join(output_dir, n) for n in ("random", "base", "lora", "merged"))

    _say("1/5 build a tiny random Llama and train a BPE tokenizer on the bundled Chinese sample")
    init_model("llama", random_base, vocab_size=3000, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
               intermediate_size=256)

    # LoRA adapts a *pretrained* model: on a random one its frozen output layer caps what it can learn.
    # So the tiny model first gets a short full fine-tune, standing in for pre-training.
    _say("2/5 stand-in for pre-training: a short full fine-tune of the random model")
    train(TrainConfig(model=random_base, data=SAMPLE_DATA, method="full", output_dir=base, max_steps=steps,
                      batch_size=8, lr=3e-3, max_length=256, save_steps=steps, seed=0))

    _say(f"3/5 fine-tune it with LoRA for {steps} steps on {SAMPLE_DATA}")
    cfg = TrainConfig(model=base, data=SAMPLE_DATA, method="lora", output_dir=adapter, max_steps=steps,
                      batch_size=8, lr=1e-2, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      max_length=256, save_steps=steps, seed=0)
    result = train(cfg)
    losses = [e["loss"] for e in result.log_history if "loss" in e]

    _say("4/5 merge the adapter into the base model")
    merge(base, adapter, merged)

    _say("5/5 generate with the merged model")
    record = load_records(SAMPLE_DATA).records[0]
    model, tok, _ = load_for_inference(merged)
    answer = generate(model, tok, [record], max_new_tokens=80)[0]
    print(f"instruction: {record['instruction']}\nreference:   {record['output']}\nmodel:       {answer}")
    k = min(10, len(losses) // 2)
    print(f"\nLoRA training loss: {sum(losses[:k]) / k:.3f} (mean of the first {k} steps) -> "
          f"{sum(losses[-k:]) / k:.3f} (last {k}); {result.trainable_params:,} of {result.total_params:,} "
          f"parameters trained")
    print(f"done: base, adapter and merged model under {output_dir}/")
    return answer
