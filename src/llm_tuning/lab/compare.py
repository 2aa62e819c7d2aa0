"""`llm-tuning compare`: several methods on one model, data, seed and budget, side by side in a report.

Every run trains in its own process (so its peak memory is its own) on the same records in the same order
with the same batch size and number of steps, hence the same real training tokens; then it is evaluated on
the same held-out records (response loss, and ROUGE/BLEU of greedy answers). A run that fails is a failed
row with its error; the others go on. Finished runs keep a result.json, so an interrupted comparison resumes
with the runs not yet done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import yaml

from ..config import FIELDS, TrainConfig
from ..errors import UserError

COMPARE_KEYS = {"model", "data", "output_dir", "runs", "budget_tokens", "max_steps", "eval_records",
                "max_new_tokens", "samples", "title", "common"}


def load_compare_config(path: str) -> dict:
    from ..config import load_yaml

    cfg = load_yaml(path)
    unknown = set(cfg) - COMPARE_KEYS - set(FIELDS)
    if unknown:
        raise UserError(f"{path}: unknown option {sorted(unknown)[0]!r}")
    for key in ("model", "data", "output_dir", "runs"):
        if not cfg.get(key):
            raise UserError(f"{path}: {key!r} is required")
    if not isinstance(cfg["runs"], list) or not all(isinstance(r, dict) and r.get("name") and r.get("method")
                                                   for r in cfg["runs"]):
        raise UserError(f"{path}: 'runs' must be a list of mappings, each with a name and a method")
    names = [r["name"] for r in cfg["runs"]]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: run names must be unique")
    return cfg


def _shared_settings(cfg: dict) -> dict:
    """TrainConfig keys shared by every run: the top-level ones and `common`."""
    shared = {k: v for k, v in cfg.items() if k in FIELDS and k not in ("output_dir", "method")}
    shared.update(cfg.get("common") or {})
    shared.setdefault("seed", 42)
    shared.setdefault("val_size", 0.1)
    shared.setdefault("batch_size", 8)
    return shared


def _steps_for_budget(cfg: dict, shared: dict, train_records: list[dict]) -> int:
    """Steps giving about `budget_tokens` real training tokens (all runs get the same steps, so the same tokens)."""
    if cfg.get("max_steps"):
        return int(cfg["max_steps"])
    if not cfg.get("budget_tokens"):
        raise UserError("compare: set either budget_tokens or max_steps")
    from ..data.cache import tokenized_dataset
    from ..data.tokenize import prepare_tokenizer
    from ..models.load import load_tokenizer

    tok = prepare_tokenizer(load_tokenizer(shared.get("tokenizer") or cfg["model"]), log=lambda m: None)
    # Through the cache: the runs tokenise exactly these records the same way, and then find them there.
    ds, _ = tokenized_dataset(tok, train_records, shared.get("template", "default"), shared.get("max_length", 512),
                              shared.get("cache", True), log=lambda m: None)
    mean = sum(len(x) for x in ds["input_ids"]) / max(1, len(ds))
    per_step = mean * shared["batch_size"] * shared.get("grad_accum", 1)
    return max(1, round(cfg["budget_tokens"] / per_step))


def _run_training(run_cfg: dict, run_dir: str, log_path: str):
    """Train in a child process; returns (exit status, wall seconds, last error line)."""
    cfg_path = os.path.join(run_dir, "train.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(run_cfg, f, allow_unicode=True)
    t = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llm_tuning", "train", "--config", cfg_path, "--resume"],
                                stdout=log, stderr=subprocess.STDOUT)
        code = proc.wait()
    wall = time.time() - t
    error = ""
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [l.strip() for l in f if l.strip() and not l.startswith(("training:", "Loading", "Writing"))]
        error = lines[-1] if lines else f"exit code {code}"
    return code, wall, error


def _estimate(run_cfg: dict):
    """The estimator's training-memory figure for this run, MiB (None where it cannot say)."""
    from .estimate import estimate, load_config

    try:
        opts = TrainConfig(**{k: v for k, v in run_cfg.items() if k in FIELDS})
        r = estimate(load_config(run_cfg["model"]), opts.method, opts.precision, opts.quantization, opts.batch_size,
                     opts.max_length, opts.gradient_checkpointing, opts)
        return r["total"] / 2**20
    except Exception:  # the estimate is a column of the report, never a reason to fail a run
        return None


def _dir_size(path: str, names) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in names if os.path.exists(os.path.join(path, n)))


def _evaluate(run_dir: str, model: str, val: list[dict], eval_records: int, max_new_tokens: int,
              template: str, max_length: int) -> dict:
    from ..infer import load_for_inference
    from ..train.heldout import response_loss
    from .scoring import generation_metrics

    m, tok, _ = load_for_inference(model, run_dir)
    loss = response_loss(m, tok, val, template, max_length)
    gen = generation_metrics(m, tok, val[:eval_records], template, max_new_tokens,
                             predictions_path=os.path.join(run_dir, "predictions.jsonl"))
    return {"heldout_loss": loss["loss"], "rouge_l": gen["rouge-l"], "bleu_4": gen["bleu-4"],
            "rouge_1": gen["rouge-1"], "rouge_2": gen["rouge-2"], "samples": gen["predictions"]}


def run_compare(config_path: str, force: bool = False, log=print) -> dict:
    from ..data.formats import load_records, split_records
    from ..methods import get_method

    cfg = load_compare_config(config_path)
    out = cfg["output_dir"]
    shared = _shared_settings(cfg)
    records = load_records(cfg["data"], shared.get("skip_bad_records", False)).records
    train_recs, val_recs = split_records(records, shared["val_size"], shared["seed"])
    steps = _steps_for_budget(cfg, shared, train_recs)
    os.makedirs(out, exist_ok=True)
    data_path = os.path.join(out, "train.json")  # every run reads the same split
    with open(data_path, "w", encoding="utf-8") as f:
        json.dump(train_recs, f, ensure_ascii=False)
    log(f"compare: {len(cfg['runs'])} runs on {cfg['model']}, {len(train_recs)} training / {len(val_recs)} held-out "
        f"records, {steps} steps of {shared['batch_size']} each")

    results = []
    for i, run in enumerate(cfg["runs"], 1):
        name = run["name"]
        run_dir = os.path.join(out, name)
        result_path = os.path.join(run_dir, "result.json")
        if os.path.exists(result_path) and not force:
            with open(result_path) as f:
                results.append(json.load(f))
            log(f"[{i}/{len(cfg['runs'])}] {name}: done already (result.json), skipped")
            continue
        if force and os.path.isdir(run_dir):
            # a forced run starts afresh: runs train with --resume (so an interrupted comparison continues), and
            # would otherwise resume from the finished checkpoint of the run being replaced
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        run_cfg = {**shared, **{k: v for k, v in run.items() if k != "name"}, "model": cfg["model"],
                   "data": os.path.abspath(data_path), "output_dir": run_dir, "val_size": 0, "max_steps": steps,
                   "save_steps": max(steps, 1)}
        log(f"[{i}/{len(cfg['runs'])}] {name} ({run['method']}): training {steps} steps ...")
        code, wall, error = _run_training(run_cfg, run_dir, os.path.join(run_dir, "train.log"))
        row = {"name": name, "method": run["method"], "status": "ok", "estimated_mib": _estimate(run_cfg),
               "wall_s": round(wall, 1)}
        if code != 0:
            row.update(status="failed", error=error)
            log(f"[{i}/{len(cfg['runs'])}] {name}: FAILED: {error}")
        else:
            try:
                with open(os.path.join(run_dir, "metrics.json")) as f:
                    metrics = json.load(f)
                row.update(
                    trainable_params=metrics["trainable_params"], total_params=metrics["total_params"],
                    train_tokens=metrics.get("train_tokens"),
                    # training memory: peak RSS above the process's RSS just before the model was loaded,
                    # the quantity the estimator predicts
                    peak_rss_mib=round(metrics["peak_rss_mib"] - metrics["rss_before_model_mib"], 1),
                    # the training process's own high-water mark (VmHWM; not the child's ru_maxrss, into which
                    # Linux carries this parent's high-water mark)
                    process_peak_rss_mib=metrics["peak_rss_mib"],
                    tokens_per_s=(metrics["train_tokens"] / metrics["train_seconds"]) if metrics.get("train_seconds") else None,
                    final_train_loss=next((e["loss"] for e in reversed(metrics["log_history"]) if "loss" in e), None),
                    loss_curve=[(e["step"], e["loss"]) for e in metrics["log_history"] if "loss" in e],
                    adapter_bytes=_dir_size(run_dir, ("adapter_model.safetensors", "bitfit.safetensors",
                                                      "model.safetensors")),
                    mergeable=get_method(run["method"]).mergeable,
                )
                row.update(_evaluate(run_dir, cfg["model"], val_recs, cfg.get("eval_records", 20),
                                     cfg.get("max_new_tokens", 64), shared.get("template", "default"),
                                     shared.get("max_length", 512)))
                log(f"[{i}/{len(cfg['runs'])}] {name}: held-out loss {row['heldout_loss']:.4f}, "
                    f"ROUGE-L {row['rouge_l']:.2f}, {row['tokens_per_s'] or 0:.0f} tokens/s, {wall:.0f} s")
            except Exception as e:  # an evaluation failure is this run's failure, not the comparison's
                row.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                log(f"[{i}/{len(cfg['runs'])}] {name}: FAILED in evaluation: {row['error']}")
        with open(result_path, "w") as f:
            json.dump(row, f, indent=2, ensure_ascii=False)
        results.append(row)

    from .report import write_report

    summary = {"title": cfg.get("title") or f"Method comparison on {os.path.basename(cfg['model'].rstrip('/'))}",
               "model": cfg["model"], "data": cfg["data"], "steps": steps, "batch_size": shared["batch_size"],
               "seed": shared["seed"], "train_records": len(train_recs), "heldout_records": len(val_recs),
               "eval_records": min(cfg.get("eval_records", 20), len(val_recs)), "samples": cfg.get("samples", 3),
               "heldout": val_recs}
    paths = write_report(out, summary, results)
    log(f"report: {paths['md']} and {paths['html']}")
    return {"results": results, **paths}
