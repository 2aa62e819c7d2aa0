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
    from ..data.texts import is_text_file
    from ..evaluate import response_loss

    if cfg.text or is_text_file(cfg.data, cfg.encoding):
        return evaluate_text(cfg)

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
    _print_metrics(cfg, r, ("records", "tokens", "loss", "perplexity", "rouge-1", "rouge-2", "rouge-l", "bleu-4"))
    if cfg.predictions:
        print(f"predictions written to {cfg.predictions}")


def _print_metrics(cfg, r: dict, keys) -> None:
    if cfg.json:
        print(json.dumps(r))
        return
    print("| metric | value |\n|---|---|")
    for key in keys:
        if key in r:
            v = r[key]
            print(f"| {key} | {v if isinstance(v, int) else f'{v:.4f}'} |")


def evaluate_text(cfg):
    """The loss over every token of plain texts; with an adapter, the base's too and the difference (forgetting,
    as `compare` measures it: the same texts, loss and truncation)."""
    from ..data.texts import load_texts
    from ..errors import UserError
    from ..evaluate import text_loss
    from ..infer import load_for_inference

    if cfg.generate:
        raise UserError(f"{cfg.data}: --generate answers instructions, and plain text has none; drop --generate "
                        "(or --text, for alpaca records)")
    texts = load_texts(cfg.data, cfg.encoding)[: cfg.limit or None]
    model, tok, _ = _load(cfg)
    r = text_loss(model, tok, texts, cfg.max_length, cfg.batch_size)
    if cfg.adapter:
        del model
        base, base_tok, _ = load_for_inference(cfg.model, None, cfg.precision, cfg.trust_remote_code,
                                               cfg.quantization)
        b = text_loss(base, base_tok, texts, cfg.max_length, cfg.batch_size)
        r.update(base_loss=b["loss"], base_perplexity=b["perplexity"], forgetting=r["loss"] - b["loss"])
    _print_metrics(cfg, r, ("texts", "tokens", "base_loss", "loss", "forgetting", "base_perplexity", "perplexity"))


def merge(cfg):
    from ..infer import merge as fold

    fold(cfg.model, cfg.adapter, cfg.output, cfg.overwrite, cfg.trust_remote_code, cfg.save_precision,
         cfg.merge_base, cfg.save_quantization)
