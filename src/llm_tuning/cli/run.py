"""train, merge, generate, eval: the pipeline's commands."""

from __future__ import annotations

import json


def train(cfg):
    from ..train.loop import train_process
    from ..train.resume import resume_hint

    try:
        train_process(cfg)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(resume_hint(cfg.output_dir)) from None


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
    from ..data.texts import is_text_file
    from ..errors import UserError

    from .heldout import heldout, with_run

    cfg = with_run(cfg)
    if not cfg.data and not cfg.tasks and not cfg.split:
        raise UserError("eval needs --data (records or plain text to score), --run DIR (a training run's held-out "
                        "records) or --tasks (lm-eval benchmarks)")
    if not cfg.model:
        raise UserError("--model is required (or --run, a folder `llm-tuning train` wrote)")
    text = bool(cfg.data) and (cfg.text or is_text_file(cfg.data, cfg.encoding))
    if text and cfg.generate:
        raise UserError(f"{cfg.data}: --generate answers instructions, and plain text has none; drop --generate "
                        "(or --text, for alpaca records)")
    manager = None
    if cfg.tasks:
        from ..infer.harness import prepare_tasks

        manager = prepare_tasks(cfg.tasks, cfg.tasks_dir)  # lm-eval installed, the tasks found: before any load
    data = heldout(cfg) if cfg.split else _read_data(cfg, text) if cfg.data else None
    model, tok, info = _load(cfg)
    r = {}
    if text:
        from ..evaluate import text_loss

        with _bar(cfg, len(data), "loss") as bar:
            r = text_loss(model, tok, data, cfg.max_length, cfg.batch_size, bar.update)
    elif data is not None:
        r = _record_figures(cfg, model, tok, _template(cfg, info), data)
    results = None
    if cfg.tasks:
        results, r["harness"] = _benchmarks(cfg, model, tok, manager)
    if text and cfg.adapter:
        del model
        r.update(_forgetting(cfg, data, r["loss"]))
    if cfg.json:
        print(json.dumps({k: v for k, v in r.items() if k != "predictions"}))
        return
    if data is not None:
        _print_metrics(r, ("texts", "tokens", "base_loss", "loss", "forgetting", "base_perplexity", "perplexity")
                       if text else ("records", "tokens", "loss", "perplexity", "rouge-1", "rouge-2", "rouge-l",
                                     "bleu-4"))
    if cfg.generate:
        _print_samples(data, r["predictions"])
    if cfg.predictions:
        print(f"predictions written to {cfg.predictions}")
    if cfg.tasks:
        from ..infer.harness import table

        print(("\n" if data is not None else "") + table(results))
        print(f"lm-eval's results written to {r['harness']['output']}")


def _bar(cfg, total: int, what: str):
    """A progress bar on stderr (off with --json, and where stderr is not a terminal: tqdm's disable=None)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="record", file=sys.stderr, disable=True if cfg.json else None,
                dynamic_ncols=True, leave=False)


SAMPLES = 3  # answers printed beside their references with --generate


def _print_samples(records, predictions) -> None:
    for rec, answer in list(zip(records, predictions))[:SAMPLES]:
        prompt = " ".join(x for x in (rec["instruction"], rec.get("input") or "") if x)
        print(f"\n> {prompt}\nreference: {rec['output']}\nanswer:    {answer}")


def _read_data(cfg, text: bool) -> list:
    """--data's plain texts or records (the first --limit), read and checked before any model is loaded."""
    if text:
        from ..data.texts import load_texts

        return load_texts(cfg.data, cfg.encoding)[: cfg.limit or None]
    from ..data.formats import load_records

    return load_records(cfg.data, cfg.skip_bad_records, encoding=cfg.encoding).records[: cfg.limit or None]


def _record_figures(cfg, model, tok, template, records) -> dict:
    """Held-out loss and perplexity of the records; with --generate, ROUGE / BLEU of greedy answers."""
    from ..evaluate import response_loss

    with _bar(cfg, len(records), "loss") as bar:
        r = response_loss(model, tok, records, template, cfg.max_length, cfg.batch_size, bar.update)
    if cfg.generate:
        from ..infer.sampling import Sampling
        from ..infer.scoring import generation_metrics

        sampling = Sampling(cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                            no_repeat_ngram_size=cfg.no_repeat_ngram_size)  # greedy
        with _bar(cfg, len(records), "answers") as bar:
            g = generation_metrics(model, tok, records, template, sampling, cfg.batch_size, cfg.predictions,
                                   bar.update)
        r.update({k: g[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "predictions")})
    return r


def _forgetting(cfg, texts, loss: float) -> dict:
    """The base model's loss on the same plain texts and the difference (forgetting, as `compare` measures it:
    the same texts, loss and truncation); loaded once the adapter's model is gone."""
    from ..evaluate import text_loss
    from ..infer import load_for_inference

    base, base_tok, _ = load_for_inference(cfg.model, None, cfg.precision, cfg.trust_remote_code, cfg.quantization)
    b = text_loss(base, base_tok, texts, cfg.max_length, cfg.batch_size)
    return {"base_loss": b["loss"], "base_perplexity": b["perplexity"], "forgetting": loss - b["loss"]}


def _print_metrics(r: dict, keys) -> None:
    print("| metric | value |\n|---|---|")
    for key in keys:
        if key in r:
            v = r[key]
            print(f"| {key} | {v if isinstance(v, int) else f'{v:.4f}'} |")


def _benchmarks(cfg, model, tok, manager) -> tuple[dict, dict]:
    """lm-eval's tasks on the loaded model: (its results, {results, groups, output} of them); the results JSON
    written."""
    import os

    from ..infer.harness import run_tasks, write_results

    results = run_tasks(model, tok, cfg.tasks, manager, cfg.limit, cfg.batch_size, cfg.bootstrap_iters, cfg.samples)
    path = cfg.harness_output or os.path.join(cfg.adapter or ".", "harness_results.json")
    write_results(path, results)
    kept = {k: results[k] for k in ("results", "groups") if results.get(k)}
    return results, json.loads(json.dumps({**kept, "output": path}, default=float))


def merge(cfg):
    from ..infer import merge as fold

    fold(cfg.model, cfg.adapter, cfg.output, cfg.overwrite, cfg.trust_remote_code, cfg.save_precision,
         cfg.merge_base, cfg.save_quantization)
