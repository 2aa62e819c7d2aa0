"""Benchmarks through EleutherAI's lm-evaluation-harness (lm-eval): `llm-tuning eval --tasks`, compare's
`harness_tasks`.

lm-eval's `hf` backend (HFLM) is given the model the project loads itself (infer.load_for_inference: every method,
BitFit and full fine-tunes included, which lm-eval's own `peft=` cannot load; nothing merged). Its
log-likelihoods are a plain forward, right for every method (prompt learning's virtual-token logits come first
and HFLM slices them off). Its generation is not: HFLM calls `model.generate`, which transformers 5 with PEFT
0.21 get wrong for prompt tuning, P-tuning and prefix tuning (infer/generate.py), so `_model_generate` decodes
with the project's own loop (generate.stream_ids) for every method, and stops a row at its first stop string.

Tasks: the YAML files of `tasks_dir` (lm-eval's include_path) are indexed alone; lm-eval's built-in tasks
(cmmlu, ceval-valid, mmlu, ...: their data comes from the Hugging Face hub) only when a name is not found there,
since indexing them all takes ~30 s. The bootstrap of standard errors is off unless asked (100,000 resamples by
default in lm-eval: slow, and it overflowed on a tiny model's perplexity).

lm-eval is an optional extra (`pip install 'llm-tuning[harness]'`), imported only here and only when used.
"""

from __future__ import annotations

import json
import os

from ..errors import UserError

INSTALL = "pip install 'llm-tuning[harness]'"
# generation options a task may set that change nothing when they have these values
_NEUTRAL = {"num_beams": 1, "top_k": None, "repetition_penalty": 1.0, "num_return_sequences": 1, "use_cache": True}


def require_lm_eval():
    """lm_eval, or a UserError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"--tasks runs EleutherAI's lm-evaluation-harness, which is not installed: {INSTALL}") from None
    return lm_eval


def task_manager(names: list[str], tasks_dir: str | None = None):
    """lm-eval's TaskManager over `tasks_dir` alone when it holds every name, else with the built-in tasks too."""
    from lm_eval.tasks import TaskManager

    if tasks_dir is not None and not os.path.isdir(tasks_dir):
        raise UserError(f"--tasks-dir {tasks_dir}: not a folder (it holds lm-eval task YAML files)")
    if tasks_dir is not None:
        local = TaskManager(include_path=os.path.abspath(tasks_dir), include_defaults=False)
        if all(local.match_tasks([n]) for n in names):
            return local
    tm = TaskManager(include_path=os.path.abspath(tasks_dir) if tasks_dir else None, include_defaults=True)
    missing = [n for n in names if not tm.match_tasks([n])]
    if missing:
        where = f"{tasks_dir} nor " if tasks_dir else ""
        raise UserError(f"--tasks: no task named {', '.join(missing)} in {where}lm-eval's built-in tasks "
                        "(`lm_eval ls tasks` lists them; a local task is a YAML file in --tasks-dir)")
    return tm


def _lm_class():
    from lm_eval.models.huggingface import HFLM

    class ProjectHFLM(HFLM):
        """HFLM over a loaded model whose generation is the project's decoding loop."""

        def _model_generate(self, context, max_length, stop, **kwargs):
            import torch

            mask = kwargs.pop("attention_mask", None)
            prompts = [row[m.bool()].tolist() for row, m in zip(context, mask)] if mask is not None else \
                context.tolist()
            new = decode_until(self.model, self.tokenizer, prompts, max_length - context.shape[1], stop,
                               **_sampling(kwargs))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
            width = max(map(len, new), default=0)
            tail = torch.tensor([n + [pad] * (width - len(n)) for n in new], dtype=context.dtype)
            return torch.cat([context, tail.reshape(len(new), width).to(context.device)], dim=1)  # HFLM cuts at
            # the context's width, decodes (special tokens skipped) and cuts the text at the first stop string

    return ProjectHFLM


def _sampling(kwargs: dict) -> dict:
    """lm-eval's generation kwargs as stream_ids' (do_sample false, or unset with temperature 0: greedy)."""
    temperature = float(kwargs.pop("temperature", None) or 0.0)
    do_sample = kwargs.pop("do_sample", None)
    top_p = kwargs.pop("top_p", None)
    for key, value in kwargs.items():
        if key not in _NEUTRAL or value not in (_NEUTRAL[key], None):
            raise UserError(f"--tasks: a task asks for the generation option {key}={value!r}, which llm-tuning's "
                            "decoding does not take (it takes do_sample, temperature, top_p)")
    return {"do_sample": bool(do_sample) if do_sample is not None else temperature > 0,
            "temperature": temperature if temperature > 0 else 1.0, "top_p": 1.0 if top_p is None else float(top_p)}


def decode_until(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stop=(), do_sample=False,
                 temperature=1.0, top_p=1.0) -> list[list[int]]:
    """The new ids of each prompt (one batch, KV-cached, every method), a row ending at eos, at its first stop
    string, or after max_new_tokens. Greedy rows are what infer.generate decodes for them alone."""
    from .generate import stream_ids

    new: list[list[int]] = [[] for _ in prompts]
    open_rows = [True] * len(prompts)
    steps = stream_ids(model, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, max_new_tokens,
                       do_sample=do_sample, temperature=temperature, top_p=top_p)
    for step in steps:
        for i, token in enumerate(step):
            if token is None or not open_rows[i]:
                continue
            new[i].append(token)
            if stop and any(s in tokenizer.decode(new[i], skip_special_tokens=True) for s in stop):
                open_rows[i] = False
        if not any(open_rows):
            steps.close()
            break
    return new


def make_lm(model, tokenizer, batch_size: int = 8):
    """lm-eval's model over our loaded model and tokenizer (its context: the model's, virtual tokens subtracted)."""
    import logging

    from .streaming import context_limit

    cls = _lm_class()
    hflm_log = logging.getLogger("lm_eval.models.huggingface")
    level = hflm_log.level
    hflm_log.setLevel(logging.ERROR)  # "pretrained is not a str: many arguments ignored": as intended here
    try:
        return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                   max_length=context_limit(model, tokenizer))
    finally:
        hflm_log.setLevel(level)


def prepare_tasks(names: list[str], tasks_dir: str | None = None):
    """The TaskManager that finds `names`, their data checked to load (a task whose data cannot be read: no hub,
    a wrong path in its YAML): bad names and unreadable tasks are one line, before any model is loaded."""
    require_lm_eval()
    tm = task_manager(names, tasks_dir)
    try:
        tm.load(names)
    except Exception as e:
        raise UserError(f"--tasks {','.join(names)}: lm-eval could not load the task: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return tm


def run_tasks(model, tokenizer, names: list[str], manager, limit: int | None = None, batch_size: int = 8,
              bootstrap_iters: int = 0, log_samples: bool = False) -> dict:
    """lm-eval's results dict (simple_evaluate) for tasks `names` (found by `manager`, prepare_tasks') on the
    loaded model."""
    import lm_eval

    return lm_eval.simple_evaluate(model=make_lm(model, tokenizer, batch_size), tasks=names, task_manager=manager,
                                   limit=limit, bootstrap_iters=bootstrap_iters, log_samples=log_samples)


def scores(results: dict, names: list[str]) -> tuple[dict, dict]:
    """({"harness/TASK/METRIC": value}, {same key: higher is better}) of the named tasks and groups (their
    standard errors left out; a filter other than lm-eval's `none` is kept in the metric's name)."""
    values, higher = {}, {}
    rows = {**results.get("groups", {}), **results.get("results", {})}
    for name in names:
        for key, value in (rows.get(name) or {}).items():
            metric, comma, filt = key.partition(",")  # "acc,none"; "alias" and the like have no filter
            if not comma or metric.endswith("_stderr") or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            label = f"harness/{name}/{metric}" + (f" ({filt})" if filt != "none" else "")
            values[label] = float(value)
            higher[label] = bool(results.get("higher_is_better", {}).get(name, {}).get(metric, True))
    return values, higher


def table(results: dict) -> str:
    """lm-eval's own Markdown table (and its groups' table when there are groups)."""
    from lm_eval.utils import make_table

    out = make_table(results)
    if results.get("groups"):
        out += "\n" + make_table(results, "groups")
    return out


def write_results(path: str, results: dict) -> None:
    """lm-eval's results as JSON (what it cannot serialise, as text), written whole or not at all."""
    from lm_eval.utils import handle_non_serializable

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + f".tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False, default=handle_non_serializable)
    os.replace(tmp, path)
