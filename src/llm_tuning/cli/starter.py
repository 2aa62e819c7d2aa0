"""init-model, demo: a model to play with, and the embedded default job."""

from __future__ import annotations


def init_model(cfg):
    from ..models.tiny import init_model as build

    build(cfg.arch, cfg.output, tokenizer=cfg.tokenizer, train_text=cfg.train_text, vocab_size=cfg.vocab_size,
          seed=cfg.seed, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
          num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size, overwrite=cfg.overwrite)


def demo(cfg):
    from ..demo import run_demo

    run_demo(cfg.output_dir, cfg.steps, cfg.pretrain_steps)
