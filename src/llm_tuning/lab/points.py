"""One point of a comparison: a run's settings at one learning rate and one seed, trained in its own process
(its peak memory is its own), and scored: validation loss (from the training process) for every point,
held-out loss and ROUGE / BLEU for the points that fill the table, and the scores of lm-eval's tasks when the
comparison names some (harness_tasks). Each point keeps a result.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import yaml

from ..config import FIELDS, TrainConfig


def point_name(lr: float, seed: int) -> str:
    return f"lr{lr:.3g}-seed{seed}"


def read_json(path: str):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def _write_config(run_cfg: dict, run_dir: str) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "train.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(run_cfg, f, allow_unicode=True)
    return path


def _last_error(log_path: str, code) -> str:
    lines = []
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [l.strip() for l in f if l.strip() and not l.startswith(("training:", "Loading", "Writing"))]
    return lines[-1] if lines else f"the training process ended (exit code {code}) before this point; see worker.log"


def estimate_mib(run_cfg: dict):
    """The estimator's training-memory figure for this run, MiB (None where it cannot say)."""
    from ..memory.estimate import estimate_run

    try:
        r = estimate_run(TrainConfig(**{k: v for k, v in run_cfg.items() if k in FIELDS}))
        return r["tensors"] / 2**20  # the report's measured figure starts from the RSS before the model load
    except Exception:  # the estimate is a column of the report, never a reason to fail a run
        return None


def _dir_size(path: str, names) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in names if os.path.exists(os.path.join(path, n)))


def _training_figures(run_dir: str, method: str) -> dict:
    from ..methods import get_method

    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    history = metrics["log_history"]
    return dict(
        trainable_params=metrics["trainable_params"], total_params=metrics["total_params"],
        train_tokens=metrics.get("train_tokens"),
        # training memory: peak RSS above the process's RSS just before the model was loaded, the quantity the
        # estimator predicts; and the training process's own high-water mark (VmHWM)
        peak_rss_mib=round(metrics["peak_rss_mib"] - metrics["rss_before_model_mib"], 1),
        process_peak_rss_mib=metrics["peak_rss_mib"],
        tokens_per_s=(metrics["train_tokens"] / metrics["train_seconds"]) if metrics.get("train_seconds") else None,
        final_train_loss=next((e["loss"] for e in reversed(history) if "loss" in e), None),
        loss_curve=[(e["step"], e["loss"]) for e in history if "loss" in e],
        # the Trainer's validation loss every eval_every steps, and the training process's final one (response
        # tokens, token-weighted, on the same validation records): what the learning rate is chosen on
        val_curve=[(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e],
        val_loss=metrics.get("eval_loss"),
        adapter_bytes=_dir_size(run_dir, ("adapter_model.safetensors", "bitfit.safetensors", "model.safetensors")),
        mergeable=get_method(method).mergeable,
    )


def _point_row(job: dict, status: dict | None, code) -> dict:
    run_cfg, run_dir = job["config"], job["dir"]
    row = {"name": job["name"], "method": run_cfg["method"], "lr": job["lr"], "seed": job["seed"], "status": "ok",
           "wall_s": (status or {}).get("wall_s"), "first_in_process": (status or {}).get("first_in_process")}
    if not status or status["code"] != 0:
        row.update(status="failed", error=(status or {}).get("error") or _last_error(os.path.join(run_dir, "train.log"), code))
        return row
    try:
        row.update(_training_figures(run_dir, run_cfg["method"]))
    except Exception as e:  # a run whose figures cannot be read is this point's failure, not the comparison's
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    return row


def train_points(jobs: list[dict], jobs_path: str, on_done, threads: int | None = None) -> list[dict]:
    """Train the points `jobs` ({config, dir, name, lr, seed}) one after another in one child process (resuming
    half-done ones: the configs say resume); on_done(job, row) as each ends. Returns their rows (status ok, or
    failed with the error; a point the process never reached, because it died, is failed too)."""
    entries = []
    for job in jobs:
        status = os.path.join(job["dir"], "status.json")
        if os.path.exists(status):
            os.remove(status)
        entries.append({"config": _write_config(job["config"], job["dir"]), "log": os.path.join(job["dir"], "train.log"),
                        "status": status})
    write_json(jobs_path, entries)
    rows: dict = {}

    def collect(code=None, final=False):
        for i, (job, entry) in enumerate(zip(jobs, entries)):
            status = read_json(entry["status"])
            if i not in rows and (status is not None or final):
                rows[i] = _point_row(job, status, code)
                on_done(job, rows[i])

    with open(os.path.join(os.path.dirname(jobs_path), "worker.log"), "a") as log:
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        proc = subprocess.Popen([sys.executable, "-m", "llm_tuning.lab.worker", jobs_path], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(0.5)
            collect()
    collect(proc.returncode, final=True)
    return [rows[i] for i in range(len(jobs))]


def evaluate(model: str, adapter: str | None, heldout: list[dict], eval_records: int, sampling, template: str,
             max_length: int, predictions_path: str | None, forget: list[str] | None = None,
             harness: dict | None = None) -> dict:
    """Held-out response loss on every held-out record; ROUGE / BLEU of the answers (`sampling`: a
    sampling.Sampling, greedy) to the first eval_records, and what the answers are like (length, loops, ends);
    with `forget` texts, the loss on them (every token, no template: forgetting is its difference to the base's);
    with `harness`, its lm-eval tasks' scores (benchmarks); the generation speed (inference_cost.py), unmerged
    and merged, against the base's."""
    from ..infer import load_for_inference
    from ..evaluate import response_loss, text_loss
    from ..infer.scoring import generation_metrics

    from .inference_cost import adapter_speed, base_speed

    t = time.time()
    m, tok, info = load_for_inference(model, adapter)
    loss = response_loss(m, tok, heldout, template, max_length)
    forget = {"forget_loss": text_loss(m, tok, forget, max_length)["loss"]} if forget else {}
    gen = generation_metrics(m, tok, heldout[:eval_records], template, sampling, predictions_path=predictions_path)
    bench = benchmarks(m, tok, harness, harness["out_dir"]) if harness else {}
    # last: the speed with the adapter merged changes the model
    speed = adapter_speed(m, tok, info["method"], model, heldout, template) if adapter else \
        base_speed(m, tok, heldout, template)
    return {"heldout_loss": loss["loss"], **forget, "rouge_l": gen["rouge-l"], "bleu_4": gen["bleu-4"],
            "rouge_1": gen["rouge-1"], "rouge_2": gen["rouge-2"], "samples": gen["predictions"],
            **gen["answers"], **speed, **bench,
            "eval_s": round(time.time() - t - bench.get("harness_s", 0), 1)}  # the harness's time: its own figure


def benchmarks(m, tok, harness: dict, out_dir: str) -> dict:
    """lm-eval's scores of the loaded model on harness["tasks"] ({"harness/TASK/METRIC": value}, which way is
    better, the seconds it took); its results JSON in out_dir/harness_results.json."""
    from ..infer.harness import run_tasks, scores, write_results

    t = time.time()
    results = run_tasks(m, tok, harness["tasks"], harness["manager"], harness.get("limit"))
    write_results(os.path.join(out_dir, "harness_results.json"), results)
    values, higher = scores(results, harness["tasks"])
    return {**values, "harness_tasks": list(harness["tasks"]), "harness_higher": higher,
            "harness_s": round(time.time() - t, 1)}


def needs_benchmarks(row: dict, harness: dict | None) -> bool:
    """A scored row (a point or the base) without this comparison's harness tasks (added since it was scored)."""
    return bool(harness) and row.get("status") == "ok" and row.get("harness_tasks") != list(harness["tasks"])


def add_benchmarks(row: dict, model: str, adapter: str | None, harness: dict, out_dir: str) -> dict:
    """A row scored before harness_tasks were added to the comparison, given their scores."""
    from ..infer import load_for_inference

    m, tok, _ = load_for_inference(model, adapter)
    row.update(benchmarks(m, tok, harness, out_dir))
    return row


def evaluate_point(row: dict, run_dir: str, model: str, heldout, eval_records, sampling, template,
                   max_length, forget=None, harness: dict | None = None) -> dict:
    """The point's held-out scores (and harness tasks'), or only the harness tasks' where it has the others."""
    try:
        if "heldout_loss" not in row:
            row.update(evaluate(model, run_dir, heldout, eval_records, sampling, template, max_length,
                                os.path.join(run_dir, "predictions.jsonl"), forget,
                                harness and {**harness, "out_dir": run_dir}))
        elif needs_benchmarks(row, harness):
            add_benchmarks(row, model, run_dir, harness, run_dir)
    except Exception as e:  # an evaluation failure is this point's failure, not the comparison's
        row.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return row


def evaluate_base(model: str, heldout, validation, eval_records, sampling, template, max_length,
                  out_dir: str, forget=None, harness: dict | None = None) -> dict:
    """The untouched model, once: held-out loss and scores as for every run, plus its validation loss."""
    from ..infer import load_for_inference
    from ..evaluate import response_loss

    os.makedirs(out_dir, exist_ok=True)
    t = time.time()
    row = {"name": "base", "method": "none (untouched model)", "status": "ok"}
    row.update(evaluate(model, None, heldout, eval_records, sampling, template, max_length,
                        os.path.join(out_dir, "predictions.jsonl"), forget, harness and {**harness, "out_dir": out_dir}))
    m, tok, _ = load_for_inference(model, None)
    row["val_loss"] = response_loss(m, tok, validation, template, max_length)["loss"] if validation else None
    row["eval_s"] = round(time.time() - t - row.get("harness_s", 0), 1)  # the harness's time is its own figure
    return row
