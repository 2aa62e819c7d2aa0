"""`llm-tuning estimate`: the memory estimate (memory/) as a table, or as JSON."""

from __future__ import annotations

import dataclasses
import json
import sys

from ..errors import UserError
from ..memory.cpu_estimate import LABELS, SUMMED
from ..memory.estimate import estimate_config
from ..memory.params import method_of
from ..memory.sizing import AUTO, resolve_auto
from ..models.arch import arch_of, load_config
from ..models.checkpointing import check_options


def _fmt(n: float) -> str:
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n >= 2**30:
        return f"{sign}{n / 2**30:.2f} GiB"
    return f"{sign}{n / 2**20:.1f} MiB"


def _settings(cfg) -> str:
    s = f"precision {cfg.precision}" + (f", {cfg.quantization} base" if cfg.quantization else "")
    s += f", batch {cfg.batch_size} x {cfg.max_length} tokens"
    if cfg.gradient_checkpointing:
        s += ", gradient checkpointing" + (f" (one layer in {cfg.checkpoint_every})" if cfg.checkpoint_every > 1 else "")
    extra = method_of(cfg.method).describe(cfg.train_config())
    s += f", {extra}" if extra else ""
    if cfg.processes > 1 or cfg.zero:
        s += f"; per process of {cfg.processes}" + (f", DeepSpeed ZeRO-{cfg.zero}" if cfg.zero else ", DDP")
    return s


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


def print_gpu_estimate(cfg) -> None:
    """`estimate --device cuda` (memory/gpu_estimate.py)."""
    est = estimate_config(cfg)
    if cfg.json:
        print(json.dumps({k: v for k, v in est.items() if k != "parts"}, indent=2))
        return
    print(f"{cfg.model}: method {cfg.method}, {_settings(cfg)}, on a CUDA GPU")
    for label, key in (("tensors at the peak", "tensors"), ("reserved by torch's caching allocator", "reserved"),
                       ("CUDA context", "context"), ("total (what nvidia-smi shows)", "total")):
        print(f"  {label:<38}  {_fmt(est[key]):>12}")
    if est["note"]:
        print(f"  note: {est['note']}")
    if line := _by_checkpoint_every(cfg, lambda c, config: estimate_config(c, config)["total"], "total"):
        print(line)


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


def print_estimate(cfg) -> None:
    check_options(cfg)
    if AUTO in (cfg.batch_size, cfg.checkpoint_every):
        cfg = _auto(cfg)
    if getattr(cfg, "device", "cpu") == "cuda":
        return print_gpu_estimate(cfg)
    est = estimate_config(cfg)
    if cfg.json:
        print(json.dumps(est, indent=2))
        return
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
