"""`llm-tuning estimate`: the memory estimate (memory/) as a table, or as JSON; with --memory GIB (or --device cuda on
a machine with one, the card's memory) the verdict: fits, or does not and what single change would (exit code
DOES_NOT_FIT)."""

from __future__ import annotations

import dataclasses
import json
import sys

from ..errors import UserError
from ..memory.cpu_estimate import LABELS, SUMMED
from ..memory.estimate import estimate_config
from ..memory.params import method_of
from ..memory.sizing import AUTO, resolve_auto
from ..memory.verdict import verdict
from ..models.arch import arch_of, load_config
from ..models.checkpointing import check_options


DOES_NOT_FIT = 3  # the exit code when the run does not fit the memory (2 is bad input, 1 a crash)
QUANTISED_BASES = {"4bit": "4-bit NF4", "8bit": "8-bit LLM.int8"}


def _fmt(n: float) -> str:
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n >= 2**30:
        return f"{sign}{n / 2**30:.2f} GiB"
    return f"{sign}{n / 2**20:.1f} MiB"


def _settings(cfg) -> str:
    s = _precision(cfg)
    s += f", batch {cfg.batch_size} x {cfg.max_length} tokens"
    if cfg.gradient_checkpointing:
        s += ", gradient checkpointing" + (f" (one layer in {cfg.checkpoint_every})" if cfg.checkpoint_every > 1 else "")
    extra = method_of(cfg.method).describe(cfg.train_config())
    return s + (f", {extra}" if extra else "")


def _precision(cfg) -> str:
    """What is held in which precision: on a quantised base the adapter trains in fp32 (Method.prepare), the
    rest of the base (embeddings, norms) stays in --precision."""
    if not cfg.quantization:
        return f"precision {cfg.precision}"
    m = method_of(cfg.method)
    trained = f"{cfg.precision} trained weights" if m.in_base_dtype else "fp32 adapter"
    rest = "" if cfg.precision == "fp32" else f" (its other weights {cfg.precision})"
    return f"{trained} on a {QUANTISED_BASES[cfg.quantization]} base{rest}"


def _budget(cfg) -> tuple[int, str] | None:
    """(bytes, how they are said) the run is held against: --memory, else with --device cuda the card's whole
    memory; None where there is neither (no verdict)."""
    if cfg.memory:
        return int(cfg.memory * 2**30), f"{cfg.memory:g} GiB"
    if cfg.device == "cuda":
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory, f"{props.total_memory / 2**30:.1f} GiB of {props.name}"
    return None


def _verdict(cfg) -> tuple[dict, str] | None:
    """(the verdict, its line) against _budget; None without one."""
    budget = _budget(cfg)
    if budget is None:
        return None
    config = load_config(cfg.model)  # once: each suggestion is the estimate again
    v = verdict(cfg, lambda c: estimate_config(c, config)["total"], budget[0])
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    if v["fits"]:
        return v, f"fits ({100 * v['share']:.0f} % of {budget[1]})"
    line = f"does not fit: needs {gib(v['needed'])} of {budget[1]}; "
    if v["suggestions"]:
        return v, line + "try " + " / ".join(f"{s['change']} ({gib(s['needed'])})" for s in v["suggestions"])
    return v, line + ("no single change of --quantization 4bit, --gradient-checkpointing or a smaller --batch-size "
                      "fits: a shorter --max-length, another --method, or more memory")


def _report(cfg, est: dict) -> int:
    """The verdict's line (or, --json, its fields added to the estimate's JSON, printed); the exit code."""
    judged = _verdict(cfg)
    if cfg.json:
        if judged:
            v = judged[0]
            est = {**est, "memory_budget": v["budget"], "fits": v["fits"], "share": v["share"],
                   "suggestions": v["suggestions"]}
        print(json.dumps(est, indent=2))
    elif judged:
        print(judged[1])
    elif cfg.device == "cuda" and not cfg.memory:
        print("(no verdict: no CUDA GPU here to read the card's memory from; give it with --memory GIB)",
              file=sys.stderr)
    return DOES_NOT_FIT if judged and not judged[0]["fits"] else 0


def _by_checkpoint_every(cfg, peak, what: str) -> str | None:
    """With checkpointing, the peak (peak(cfg, config): bytes) at a few --checkpoint-every values and without it:
    what recomputing fewer layers would cost in memory (docs/memory.md, "Partial checkpointing")."""
    if not cfg.gradient_checkpointing:
        return None
    config = load_config(cfg.model)  # once (a hub id's config is a request each time)
    at = lambda **kw: _fmt(peak(dataclasses.replace(cfg, **kw), config))  # noqa: E731
    parts = [f"{n}: {at(checkpoint_every=n)}" for n in (1, 2, 4, 8) if n < arch_of(config).layers]
    parts.append(f"none: {at(gradient_checkpointing=False, checkpoint_every=1)}")
    return f"  {what} by --checkpoint-every: " + ", ".join(parts)


def print_gpu_estimate(cfg) -> int:
    """`estimate --device cuda` (memory/gpu_estimate.py); the exit code."""
    est = estimate_config(cfg)
    if cfg.json:
        return _report(cfg, {k: v for k, v in est.items() if k != "parts"})
    print(f"{cfg.model}: method {cfg.method}, {_settings(cfg)}, on a CUDA GPU")
    for label, key in (("tensors at the peak", "tensors"), ("reserved by torch's caching allocator", "reserved"),
                       ("CUDA context", "context"), ("total (what nvidia-smi shows)", "total")):
        print(f"  {label:<38}  {_fmt(est[key]):>12}")
    if est["note"]:
        print(f"  note: {est['note']}")
    if line := _by_checkpoint_every(cfg, lambda c, config: estimate_config(c, config)["total"], "total"):
        print(line)
    return _report(cfg, est)


def _auto(cfg):
    """`estimate --batch-size auto` / `--checkpoint-every auto`: what `train` would choose, in --memory GiB or this
    machine's memory (said on stderr, so that --json stays one JSON document)."""
    cuda = cfg.device == "cuda"
    memory = (int(cfg.memory * 2**30), "given (--memory)") if cfg.memory else None
    if memory is None and cuda:
        import torch

        if not torch.cuda.is_available():
            raise UserError("estimate --device cuda with auto: no CUDA GPU here to read the free memory of; give "
                            "the card's memory with --memory GIB (e.g. --memory 24)")
    say = lambda m: print(m, file=sys.stderr if cfg.json else sys.stdout)  # noqa: E731
    run = resolve_auto(cfg.train_config(), say, memory, cuda)
    return dataclasses.replace(cfg, batch_size=run.batch_size, checkpoint_every=run.checkpoint_every)


def print_estimate(cfg) -> int:
    """The estimate's table (or JSON) and verdict; the exit code: 0, or DOES_NOT_FIT."""
    check_options(cfg)
    if AUTO in (cfg.batch_size, cfg.checkpoint_every):
        cfg = _auto(cfg)
    if getattr(cfg, "device", "cpu") == "cuda":
        return print_gpu_estimate(cfg)
    est = estimate_config(cfg)
    if cfg.json:
        return _report(cfg, est)
    pct = 100.0 * est["trainable_params"] / est["total_params"]
    print(f"{cfg.model}: {est['total_params']:,} parameters; method {cfg.method} trains "
          f"{est['trainable_params']:,} ({pct:.4f}%)")
    print(_settings(cfg))
    width = max(len(v) for v in LABELS.values())
    for key in SUMMED:
        if est[key] or key in ("weights", "activations"):
            print(f"  {LABELS[key]:<{width}}  {_fmt(est[key]):>12}")
    print(f"  {'-' * width}  {'-' * 12}")
    if est["loading"]:  # converting while loading can peak above training (cpu_estimate._loading_peak)
        print(f"  {LABELS['training']:<{width}}  {_fmt(est['training']):>12}")
        print(f"  {LABELS['loading']:<{width}}  {_fmt(est['loading']):>12}")
    print(f"  {LABELS['total']:<{width}}  {_fmt(est['total']):>12}")
    if est["quantisation_savings"]:
        print(f"  ({LABELS['quantisation_savings']}: {_fmt(est['quantisation_savings'])} of base weights)")
    if line := _by_checkpoint_every(cfg, lambda c, config: estimate_config(c, config)["training"], "training peak"):
        print(line)
    return _report(cfg, est)
