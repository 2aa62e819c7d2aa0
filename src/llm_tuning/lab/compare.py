"""`llm-tuning compare`: several methods on one model, data and budget, over seeds and learning rates, against
the untouched model, side by side in a report.

The records are split once (split_seed) into training, validation and held-out records. Every run trains on the
same training records in its own process, with the same batch size and number of steps (hence the same real
training tokens), at each of its learning rates and seeds; the training process measures the validation loss
every eval_every steps and at the end. A run's rate is the one of least mean validation loss over its sweep
seeds; the held-out records, which the table reports (held-out loss, ROUGE / BLEU of greedy answers), are never
used to choose anything. The base model is evaluated once on the same records.

Each point (run x rate x seed) keeps a result.json, so an interrupted comparison resumes with the points not yet
done; a point that fails is recorded and the others go on; --force starts every run afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

from ..errors import UserError
from .aggregate import choose_lr, edge, harness_columns, noise_summary, run_row, sweep_table
from .points import (add_benchmarks, estimate_mib, evaluate_base, evaluate_point, needs_benchmarks, point_name,
                     read_json, train_points, write_json)
from .settings import budget_folder, load_compare_config, lr_grid

__all__ = ["load_compare_config", "run_compare", "split_three_ways"]


def split_three_ways(records: list[dict], heldout_size: float, val_size: float, seed: int):
    """(training, validation, held-out) index lists: held-out first, then validation from the rest."""
    from ..data.formats import split_records

    idx = [{"i": i} for i in range(len(records))]
    rest, heldout = split_records(idx, heldout_size, seed)
    train, val = split_records(rest, val_size, seed) if val_size else (rest, [])
    return [r["i"] for r in train], [r["i"] for r in val], [r["i"] for r in heldout]


def _steps_for_budget(cc, shared: dict, train_records: list[dict], budget: float = 1.0) -> int:
    """Steps giving about `budget` x `budget_tokens` real training tokens (all runs get the same steps, so the same
    tokens)."""
    if cc.max_steps:
        return max(1, round(cc.max_steps * budget))
    from ..data.cache import tokenized_dataset
    from ..data.tokenize import prepare_tokenizer
    from ..models.load import load_tokenizer

    tok = prepare_tokenizer(load_tokenizer(shared.get("tokenizer") or cc.model), log=lambda m: None,
                            template=shared.get("template"))
    # Through the cache: the runs tokenise exactly these records the same way, and then find them there.
    ds, _ = tokenized_dataset(tok, train_records, shared.get("template", "default"), shared.get("max_length", 512),
                              shared.get("cache", True), log=lambda m: None)
    mean = sum(len(x) for x in ds["input_ids"]) / max(1, len(ds))
    per_step = mean * shared["batch_size"] * shared.get("grad_accum", 1)
    return max(1, round(cc.budget_tokens * budget / per_step))


class _Comparison:
    """The state of one `compare` invocation: settings, split, data files, counters and timings."""

    def __init__(self, config_path: str, force: bool, log, output_dir: str, budget: float = 1.0,
                 centres: dict | None = None, forget: list[str] | None = None):
        """output_dir: this comparison's folder (a budget's own with several budgets); centres: {run name: rate}
        that `lr: auto` sweeps around instead of the method's default (the rate chosen at the budget before);
        forget: the forgetting texts, when a comparison before this one (a smaller budget) has them already."""
        from ..data.formats import load_records

        t = time.time()
        self.cc, self.shared = load_compare_config(config_path)
        self.cc.output_dir = output_dir
        self.force, self.log, self.out, self.budget = force, log, output_dir, budget
        records = load_records(self.cc.data, self.shared.get("skip_bad_records", False),
                               encoding=self.shared.get("encoding")).records
        try:
            tr, va, ho = split_three_ways(records, self.cc.heldout_size, self.cc.val_size, self.cc.split_seed)
        except UserError as e:
            raise UserError(f"{config_path}: heldout_size {self.cc.heldout_size} and val_size {self.cc.val_size} "
                            f"of {len(records)} records: {e}") from None
        self.split = {"train": tr, "validation": va, "heldout": ho}
        self.train, self.val, self.heldout = ([records[i] for i in part] for part in (tr, va, ho))
        self.grids = {r["name"]: lr_grid(r, self.cc, (centres or {}).get(r["name"])) for r in self.cc.runs}
        if not self.val and any(len(g) > 1 for g in self.grids.values()):
            raise UserError(f"{config_path}: a learning-rate sweep needs validation records (val_size > 0)")
        self._forget = forget
        if self.cc.forget_data and forget is None:  # a bad file is refused before anything trains
            from ..data.texts import load_texts

            try:
                self._forget = load_texts(self.cc.forget_data)
            except UserError as e:
                raise UserError(f"{config_path}: forget_data: {e}") from None
        self.steps = _steps_for_budget(self.cc, self.shared, self.train, budget)
        self.eval_every = self.cc.eval_every or max(1, self.steps // 8)
        self.timings = {"split and tokenisation": time.time() - t}
        self.done, self.total = 0, sum(self._points_of(r) for r in self.cc.runs)
        self.lock = threading.Lock()  # runs may train in parallel threads (each driving its own process)
        self.harness = None
        if self.cc.harness_tasks:  # lm-eval there and the tasks found before anything trains
            from ..infer.harness import prepare_tasks

            self.harness = {"tasks": self.cc.harness_tasks, "limit": self.cc.harness_limit,
                            "manager": prepare_tasks(self.cc.harness_tasks, self.cc.harness_tasks_dir)}

    def _sweep_seeds(self, run) -> list[int]:
        seeds = self.cc.seeds
        return seeds[: self.cc.sweep_seeds] if len(self.grids[run["name"]]) > 1 and self.cc.sweep_seeds else seeds

    def _points_of(self, run) -> int:
        grid, sweep = self.grids[run["name"]], self._sweep_seeds(run)
        return len(grid) * len(sweep) + len(self.cc.seeds) - len(sweep)

    def prepare_folders(self):
        if self.cc.threads:  # the evaluations in this process too
            import torch

            torch.set_num_threads(self.cc.threads)
        os.makedirs(os.path.join(self.out, "data"), exist_ok=True)
        if self.force:
            # a forced run starts afresh: points train with --resume (so an interrupted comparison continues), and
            # would otherwise resume from the finished checkpoint of the run being replaced
            for name in [r["name"] for r in self.cc.runs] + ["base"]:
                if os.path.isdir(os.path.join(self.out, name)):
                    shutil.rmtree(os.path.join(self.out, name))
        # every run reads the same two files: it trains on the training records in this order and measures its
        # validation loss on exactly the validation records (train --val-data)
        self.data_paths = {}
        for part, records in (("train", self.train), ("validation", self.val)):
            if not records:  # no validation records: the runs measure no validation loss
                continue
            path = os.path.join(self.out, "data", f"{part}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(records, f, ensure_ascii=False)
            self.data_paths[part] = os.path.abspath(path)
        write_json(os.path.join(self.out, "data", "split.json"),
                   {"data": self.cc.data, "split_seed": self.cc.split_seed, **self.split})
        if self._forget and not self.cc.forget_data:  # the sample drawn at a budget before: the same texts here
            from .forgetting import write_texts

            write_texts(os.path.join(self.out, "data"), self._forget)

    def forget(self) -> list[str]:
        """The texts forgetting is measured on (none with forget_texts 0 and no forget_data); the base's own
        sample is drawn the first time an evaluation needs it."""
        if self._forget is None:
            from .forgetting import forget_texts

            self._forget = forget_texts(self.cc, os.path.join(self.out, "data"), self.force, self.log) \
                if self.cc.forget_data or self.cc.forget_texts else []
        return self._forget

    def drawn_forget(self) -> list[str] | None:
        """The forgetting texts where this comparison has read or drawn them (None: no evaluation needed them)."""
        return self._forget

    def _eval_args(self):
        from ..infer.sampling import Sampling

        sampling = Sampling(self.cc.max_new_tokens, repetition_penalty=self.cc.repetition_penalty,  # greedy
                            no_repeat_ngram_size=self.cc.no_repeat_ngram_size)
        return (self.heldout, self.cc.eval_records, sampling, self.shared.get("template", "default"),
                self.shared.get("max_length", 512))

    def base(self) -> dict:
        path = os.path.join(self.out, "base", "result.json")
        row = read_json(path)
        if row is None:
            self.log("base: evaluating the untouched model on the held-out and validation records ...")
            t = time.time()
            try:
                row = evaluate_base(self.cc.model, self.heldout, self.val, *self._eval_args()[1:],
                                    os.path.dirname(path), self.forget(), self.harness)
            except Exception as e:  # the comparison goes on without its reference line
                row = {"name": "base", "status": "failed", "error": f"{type(e).__name__}: {e}"}
            row["eval_s"] = round(time.time() - t - row.get("harness_s", 0), 1)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json(path, row)
        elif needs_benchmarks(row, self.harness):
            self.log("base: scoring the harness tasks ...")
            try:
                add_benchmarks(row, self.cc.model, None, self.harness, os.path.dirname(path))
            except Exception as e:
                row.update(status="failed", error=f"{type(e).__name__}: {e}")
            write_json(path, row)
        else:
            self.log("base: done already (base/result.json), skipped")
        if row.get("status") == "ok":
            self.log(f"base: held-out loss {row['heldout_loss']:.4f}, ROUGE-L {row['rouge_l']:.2f}, "
                     f"validation loss {row['val_loss'] or float('nan'):.4f}"
                     + (f", loss on the forgetting texts {row['forget_loss']:.4f}" if "forget_loss" in row else ""))
        return row

    def run_settings(self, run, lr: float, seed: int, run_dir: str) -> dict:
        return {**self.shared, **{k: v for k, v in run.items() if k not in ("name", "lr")}, "model": self.cc.model,
                "data": self.data_paths["train"], "val_data": self.data_paths.get("validation"),
                "val_size": 0, "output_dir": run_dir, "seed": seed,
                "lr": lr, "max_steps": self.steps, "save_steps": self.steps, "eval_steps": self.eval_every,
                "resume": True, "base_eval": False}  # the comparison evaluates the base itself, once

    def _label(self, run, lr, seed):
        return f"{run['name']} lr {lr:.3g} seed {seed}"

    def trained(self, run, wanted: list[tuple[float, int]]) -> dict:
        """{(lr, seed): point result} for `wanted`: read from each point's result.json, the others trained one
        after another in one process (and their result.json written as each ends)."""
        rows, jobs = {}, []
        for lr, seed in wanted:
            run_dir = os.path.join(self.out, run["name"], point_name(lr, seed))
            row = read_json(os.path.join(run_dir, "result.json"))
            if row is not None:
                rows[(lr, seed)] = row
                with self.lock:
                    self.done += 1
                self.log(f"[{self.done}/{self.total}] {self._label(run, lr, seed)}: done already (result.json), skipped")
            else:
                jobs.append({"config": self.run_settings(run, lr, seed, run_dir), "dir": run_dir, "name": run["name"],
                             "lr": lr, "seed": seed})
        if not jobs:
            return rows
        self.log(f"{run['name']} ({run['method']}): training {len(jobs)} point(s) of {self.steps} steps in one process ...")

        def done(job, row):
            with self.lock:
                self.done += 1
                label = f"[{self.done}/{self.total}] {self._label(run, job['lr'], job['seed'])}"
            if row["status"] != "ok":
                self.log(f"{label}: FAILED: {row['error']}")
            else:
                self.log(f"{label}: validation loss {row['val_loss'] or float('nan'):.4f}, "
                         f"{row['tokens_per_s'] or 0:.0f} tokens/s, {row['wall_s'] or 0:.0f} s")
            write_json(os.path.join(job["dir"], "result.json"), row)
            rows[(job["lr"], job["seed"])] = row

        train_points(jobs, os.path.join(self.out, run["name"], "jobs.json"), done, self.cc.threads)
        return rows

    def evaluated(self, run, lr: float, seed: int, row: dict) -> dict:
        """The point scored on the held-out records (once: the scores are kept in its result.json)."""
        if row["status"] != "ok" or "heldout_loss" in row and not needs_benchmarks(row, self.harness):
            return row
        run_dir = os.path.join(self.out, run["name"], point_name(lr, seed))
        evaluate_point(row, run_dir, self.cc.model, *self._eval_args(), self.forget(), self.harness)
        label = self._label(run, lr, seed)
        if row["status"] == "ok":
            self.log(f"    {label}: held-out loss {row['heldout_loss']:.4f}, ROUGE-L {row['rouge_l']:.2f}"
                     + (f", forgetting-text loss {row['forget_loss']:.4f}" if "forget_loss" in row else ""))
        else:
            self.log(f"    {label}: FAILED in evaluation: {row['error']}")
        write_json(os.path.join(run_dir, "result.json"), row)
        return row

    def train_run(self, run) -> tuple[dict, list | None, float | None]:
        """Sweep the run's rates on its sweep seeds, choose on validation, train the other seeds at that rate.
        Returns (its points, the sweep table or None, the chosen rate)."""
        grid, seeds = self.grids[run["name"]], self.cc.seeds
        if len(grid) == 1:
            return self.trained(run, [(grid[0], s) for s in seeds]), None, grid[0]
        sweep_seeds = self._sweep_seeds(run)
        points = self.trained(run, [(lr, s) for lr in grid for s in sweep_seeds])
        sweep = sweep_table(grid, points, sweep_seeds)
        chosen = choose_lr(sweep)
        points, sweep, chosen = self._bracket(run, points, sweep, chosen, sweep_seeds)
        losses = ", ".join(f"{r['lr']:.3g}: " + (f"{r['val_mean']:.4f}" if r["eligible"] else "failed") for r in sweep)
        self.log(f"    {run['name']}: " + (f"learning rate {chosen:.3g} chosen" if chosen is not None else
                                           "no rate trained") + f" on the mean validation loss ({losses})")
        rest = [s for s in seeds if s not in sweep_seeds] if chosen is not None else []
        points.update(self.trained(run, [(chosen, s) for s in rest]))
        return points, sweep, chosen

    def _bracket(self, run, points, sweep, chosen, sweep_seeds):
        """Extend the sweep past the edge its best rate sits at (x3 a step, lr_extend steps at most) until the best
        has a worse or diverged neighbour on each side."""
        for _ in range(self.cc.lr_extend):
            grid = self.grids[run["name"]]
            side = edge(grid, chosen)
            if side is None:
                break
            lr = float(f"{(max(grid) * 3 if side == 'high' else min(grid) / 3):.3g}")
            self.grids[run["name"]] = sorted(grid + [lr])
            with self.lock:
                self.total += len(sweep_seeds)
            self.log(f"    {run['name']}: the best rate {chosen:.3g} is the sweep's {side}est: adding {lr:.3g}")
            points.update(self.trained(run, [(lr, s) for s in sweep_seeds]))
            sweep = sweep_table(self.grids[run["name"]], points, sweep_seeds)
            chosen = choose_lr(sweep)
        return points, sweep, chosen

    def row(self, run, trained, base: dict) -> dict:
        """Every seed at the chosen rate scored on the held-out records; the run's row, written to its folder."""
        points, sweep, chosen = trained
        grid, seeds = self.grids[run["name"]], self.cc.seeds
        finals = [self.evaluated(run, chosen, s, points[(chosen, s)]) for s in seeds] if chosen is not None else []
        row = run_row(run, grid, sweep, chosen, finals, base if base.get("status") == "ok" else None,
                      estimate_mib(self.run_settings(run, chosen or grid[0], seeds[0], "")), list(points.values()))
        write_json(os.path.join(self.out, run["name"], "result.json"), row)
        return row

    def rows(self, base: dict) -> list[dict]:
        """Train the runs (`parallel` training processes at once), then score them one after another."""
        if self.cc.parallel > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.cc.parallel) as pool:
                trained = list(pool.map(self.train_run, self.cc.runs))
            return [self.row(run, t, base) for run, t in zip(self.cc.runs, trained)]
        return [self.row(run, self.train_run(run), base) for run in self.cc.runs]


def _timings(cmp: _Comparison, base: dict, rows: list[dict]) -> dict:
    """Seconds per part of the comparison (training and evaluation from the points' own records, so a resumed
    comparison counts the work done before it too)."""
    sweep_s = final_s = eval_s = harness_s = 0.0
    for run in cmp.cc.runs:
        name = run["name"]
        for entry in os.listdir(os.path.join(cmp.out, name)) if os.path.isdir(os.path.join(cmp.out, name)) else []:
            p = read_json(os.path.join(cmp.out, name, entry, "result.json"))
            if not p:
                continue
            in_sweep = len(cmp.grids[name]) > 1 and p["seed"] in cmp._sweep_seeds(run)
            if in_sweep:
                sweep_s += p.get("wall_s") or 0
            else:
                final_s += p.get("wall_s") or 0
            eval_s += p.get("eval_s") or 0
            harness_s += p.get("harness_s") or 0
    out = {**cmp.timings, "base evaluation": base.get("eval_s") or 0.0,
           "training: learning-rate sweep (every rate x sweep seed)": sweep_s,
           "training at one rate (runs not swept, seeds beyond sweep_seeds)": final_s,
           "held-out evaluation (loss, forgetting, ROUGE / BLEU)": eval_s}
    if cmp.harness:
        out["harness tasks (lm-eval; runs and base)"] = harness_s + (base.get("harness_s") or 0)
    return out


def _output_dir(from_yaml: str, given: str | None, log) -> str:
    """The report folder: the one given (--output-dir), else the YAML's; a committed example's report (a
    reference, tracked by git) is not rewritten by whoever runs its YAML: the run goes to runs/NAME and says so."""
    from ..paths import is_committed_example

    if given:
        return given
    if not is_committed_example(from_yaml):
        return from_yaml
    mine = os.path.join("runs", os.path.basename(os.path.normpath(from_yaml)))
    log(f"compare: {from_yaml} is a committed reference report, left as it is; writing to {mine} instead "
        f"(--output-dir DIR to choose; --output-dir {from_yaml} --force to regenerate the reference)")
    return mine


def _line_logger(log):
    """`log` one whole line at a time: with `parallel` > 1 several threads report at once, and print() writes a
    message and its newline separately, so two lines could run together ("...skipped[4/55] ...")."""
    lock = threading.Lock()

    def say(message: str):
        with lock:
            log(message)

    return say


def _compare_at(cmp: _Comparison, base_row: dict | None = None) -> dict:
    """One budget's comparison: the base, every run's sweep and seeds, the report in cmp.out."""
    t0 = time.time()
    cmp.prepare_folders()
    cc, log = cmp.cc, cmp.log
    log(f"compare: {len(cc.runs)} runs x {len(cc.seeds)} seeds on {cc.model}, {len(cmp.train)} training / "
        f"{len(cmp.val)} validation / {len(cmp.heldout)} held-out records, {cmp.steps} steps of "
        f"{cmp.shared['batch_size']} each, {cmp.total} trainings")
    if base_row is not None and read_json(os.path.join(cmp.out, "base", "result.json")) is None:
        os.makedirs(os.path.join(cmp.out, "base"), exist_ok=True)  # the same model on the same records
        write_json(os.path.join(cmp.out, "base", "result.json"), base_row)
    base = cmp.base()
    rows = cmp.rows(base)
    noise = noise_summary(rows)
    timings = _timings(cmp, base, rows)

    from .forgetting import describe
    from .pareto import pareto_table
    from .report import write_report

    summary = {"title": cc.title or f"Method comparison on {os.path.basename(cc.model.rstrip('/'))}",
               "model": cc.model, "data": cc.data, "steps": cmp.steps, "batch_size": cmp.shared["batch_size"],
               "budget": cmp.budget, "seeds": cc.seeds, "split_seed": cc.split_seed, "train_records": len(cmp.train),
               "val_records": len(cmp.val), "heldout_records": len(cmp.heldout), "eval_every": cmp.eval_every,
               "eval_records": min(cc.eval_records, len(cmp.heldout)), "samples": cc.samples,
               "quote_records": cc.quote_records, "max_new_tokens": cc.max_new_tokens,
               "repetition_penalty": cc.repetition_penalty, "no_repeat_ngram_size": cc.no_repeat_ngram_size,
               "lr_factors": cc.lr_factors, "lr_extend": cc.lr_extend, "sweep_seeds": cc.sweep_seeds,
               "forgetting": describe(cc, cmp.forget()) if "forget_loss" in base else None,
               "pareto": {q: pareto_table(rows, q) for q in ("heldout_loss", "forgetting")},
               "heldout": cmp.heldout, "noise": noise, "timings": timings}
    if cc.harness_tasks:
        summary.update(harness_tasks=cc.harness_tasks, harness_columns=harness_columns(base, rows))
    timings["this invocation up to the report (wall)"] = time.time() - t0
    paths = write_report(cmp.out, summary, base, rows)
    write_json(os.path.join(cmp.out, "compare.json"),
               {**{k: v for k, v in summary.items() if k != "heldout"}, "base": base, "runs": rows})
    log(f"report: {paths['md']} and {paths['html']}")
    return {"results": rows, "base": base, "summary": summary, **paths}


def run_compare(config_path: str, force: bool = False, log=print, output_dir: str | None = None) -> dict:
    """The comparison at each of the YAML's budgets; with several, each in budget-Nx/ (its sweeps centred on the
    rates chosen at the budget before), and a report across them in the output folder."""
    log = _line_logger(log)
    cc, _ = load_compare_config(config_path)
    out = _output_dir(cc.output_dir, output_dir, log)
    if cc.budgets == [1]:
        return _compare_at(_Comparison(config_path, force, log, out))
    done, centres, base, forget = [], {}, None, None
    for b in sorted(cc.budgets):
        log(f"compare: budget {b:g}x")
        cmp = _Comparison(config_path, force, log, os.path.join(out, budget_folder(b)), b, centres, forget)
        result = _compare_at(cmp, base)
        base, forget = result["base"], cmp.drawn_forget()
        centres = {r["name"]: r["lr"] for r in result["results"] if r.get("lr") is not None}
        done.append(result)
    from .budgets import write_budget_report

    paths = write_budget_report(out, cc, done)
    log(f"report across budgets: {paths['md']} and {paths['html']}")
    return {"results": [r["results"] for r in done], "base": base, "budgets": done, **paths}
