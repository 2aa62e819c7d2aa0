"""train, merge, generate, eval: the pipeline's commands."""

from __future__ import annotations

import json


def train(cfg):
    from ..train.loop import train_process

    train_process(cfg)


def _template(cfg, info):
    return cfg.template or info.get("template") or "default"


def _load(cfg):
    from ..infer import load_for_inference

    return load_for_inference(cfg.model, cfg.adapter, cfg.precision, cfg.trust_remote_code, cfg.quantization)


def generate(cfg):
    from ..infer import generate as answer
    from ..infer.sampling import Sampling

    model, tok, info = _load(cfg)
    rec = {"instruction": cfg.prompt, "input": cfg.input, "output": ""}
    print(answer(model, tok, [rec], _template(cfg, info), Sampling.from_config(cfg))[0])


def evaluate(cfg):
    from ..data.formats import load_records
    from ..evaluate import response_loss

    records = load_records(cfg.data, cfg.skip_bad_records, encoding=cfg.encoding).records
    if cfg.limit:
        records = records[: cfg.limit]
    model, tok, info = _load(cfg)
    template = _template(cfg, info)
    r = response_loss(model, tok, records, template, cfg.max_length, cfg.batch_size)
    if cfg.generate:
        from ..infer.sampling import Sampling
        from ..infer.scoring import generation_metrics

        sampling = Sampling(cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                            no_repeat_ngram_size=cfg.no_repeat_ngram_size)  # greedy
        g = generation_metrics(model, tok, records, template, sampling, cfg.batch_size, cfg.predictions)
        r.update({k: g[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")})
    if cfg.json:
        print(json.dumps(r))
        return
    print("| metric | value |\n|---|---|")
    for key in ("records", "tokens", "loss", "perplexity", "rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        if key in r:
            v = r[key]
            print(f"| {key} | {v if isinstance(v, int) else f'{v:.4f}'} |")
    if cfg.predictions:
        print(f"predictions written to {cfg.predictions}")


def merge(cfg):
    from ..infer import merge as fold

    fold(cfg.model, cfg.adapter, cfg.output, cfg.overwrite, cfg.trust_remote_code, cfg.save_precision,
         cfg.merge_base, cfg.save_quantization)
