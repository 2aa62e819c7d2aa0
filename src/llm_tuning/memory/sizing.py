"""`--batch-size auto` and `--checkpoint-every auto`, sized by the memory estimate.

`--batch-size auto`: the largest micro-batch the memory estimate (estimate.py) says fits in this process's share of
the device's memory: on CUDA the device's free memory (`torch.cuda.mem_get_info`) against `estimate --device
cuda`'s total; on a CPU the machine's available memory (MemAvailable) shared by the processes on it, against the
CPU estimate's peak above the process itself. The estimate is a model (docs/memory.md says how close it is), so a
tenth of the memory is kept back. Resolved before anything heavy is loaded; the run's config.yaml records the
batch that trained, so a rerun is the same run.

Accelerate's `find_executable_batch_size` (Trainer's auto_find_batch_size) finds a batch by trying and halving on
out-of-memory errors; that works on CUDA only (a CPU out of memory is the kernel's OOM killer, not an exception),
and costs failed steps. The estimate answers on both devices before the first step.

`--checkpoint-every auto` (with --gradient-checkpointing): at the batch size (chosen first when it is auto too, with
every layer checkpointed), the largest N, so the fewest layers recomputed, whose estimate fits the same share. Every
N from the layer count down is tried: the peak does not grow with N everywhere (a checkpointed last layer is
recomputed with every layer below it kept, activations.py)."""

from __future__ import annotations

import dataclasses
import json
import os

from ..errors import UserError
from ..options import AUTO  # noqa: F401  the value `--batch-size auto` stands for (equal to 0), read from here too

LIMIT = 64  # more is rarely faster on one device; grad_accum reaches larger batches
HEADROOM = 0.9


def available_memory(cuda: bool) -> tuple[int, str]:
    """(bytes this process may use, where they were read)."""
    if cuda:
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free), f"free on {torch.cuda.get_device_name()}"
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    n = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    return info["MemAvailable"] // n, "available RAM" + (f" / {n} processes" if n > 1 else "")


def needed_bytes(cfg, batch: int, cuda: bool, config=None) -> int:
    """The estimate for this run at micro-batch `batch`: what it adds to the process (CPU) or the device's total.
    config: cfg.model's config already read (load_config; the searches below read it once), or None to read it."""
    from .estimate import estimate_run

    every = 1 if cfg.checkpoint_every == AUTO else cfg.checkpoint_every  # not chosen yet: sized with every layer
    run = dataclasses.replace(cfg, batch_size=batch, checkpoint_every=every)
    est = estimate_run(run, config, cuda)
    return est["total"] if cuda else est["total"] - est["runtime"]


def largest_fitting(fits, limit: int = LIMIT) -> int:
    """The largest b in 1..limit with fits(b) (0 if not even 1); fits grows false with b: doubling, then bisection."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _cuda(cuda: bool | None) -> bool:
    if cuda is None:
        import torch

        return torch.cuda.is_available()
    return cuda


def resolve_auto(cfg, log, memory: tuple[int, str] | None = None, cuda: bool | None = None, agree=None):
    """`--batch-size auto`, then `--checkpoint-every auto`, resolved; agree(cfg, field): the value every process
    takes (train under several processes), cfg itself by default."""
    if AUTO not in (cfg.batch_size, cfg.checkpoint_every):
        return cfg
    cuda = _cuda(cuda)
    for field, resolve in (("batch_size", resolve_batch_size), ("checkpoint_every", resolve_checkpoint_every)):
        if getattr(cfg, field) == AUTO:
            cfg = resolve(cfg, log, memory, cuda)
            cfg = agree(cfg, field) if agree else cfg
    return cfg


def _room(memory, cuda: bool) -> tuple[int, str]:
    """(bytes usable, how the log and errors say it)."""
    budget, where = memory or available_memory(cuda)
    usable = int(budget * HEADROOM)
    return usable, f"{_gib(usable)} usable, {HEADROOM:.0%} of {_gib(budget)} {where}"


# What the estimate raises for a model it cannot size: an architecture or option it does not know (EstimateError,
# a UserError), a config that cannot be read (OSError; a config.json that is not JSON). Anything else is a bug in
# the estimator, and propagates as one.
_CANNOT_SIZE = (UserError, OSError, json.JSONDecodeError)


def _estimated(flag: str, sizes):
    """sizes(), with a model the estimate cannot size said in one line."""
    try:
        return sizes()
    except _CANNOT_SIZE as e:
        raise UserError(f"{flag} auto: the memory estimate cannot size this model ({e}); give {flag} N")


def resolve_batch_size(cfg, log, memory: tuple[int, str] | None = None, cuda: bool | None = None):
    """cfg with `--batch-size auto` replaced by the batch chosen (cfg itself otherwise). memory: (bytes, where)
    instead of reading the device's."""
    if cfg.batch_size != AUTO:
        return cfg
    from ..models.arch import load_config

    cuda = _cuda(cuda)
    usable, room = _room(memory, cuda)
    config = _estimated("--batch-size", lambda: load_config(cfg.model))
    batch = _estimated("--batch-size",
                       lambda: largest_fitting(lambda b: needed_bytes(cfg, b, cuda, config) <= usable))
    if batch == 0:
        raise UserError(f"--batch-size auto: one example of --max-length {cfg.max_length} is estimated at "
                        f"{_gib(needed_bytes(cfg, 1, cuda, config))}, more than the {room}; lower --max-length, or "
                        "add --gradient-checkpointing or --quantization 4bit")
    log(f"batch size auto: {batch} (estimated {_gib(needed_bytes(cfg, batch, cuda, config))} of the {room}"
        + (f"; capped at {LIMIT}" if batch == LIMIT else "") + ")")
    return dataclasses.replace(cfg, batch_size=batch)


def resolve_checkpoint_every(cfg, log, memory: tuple[int, str] | None = None, cuda: bool | None = None):
    """cfg with `--checkpoint-every auto` replaced by the N chosen (cfg itself otherwise); the batch size is known."""
    if cfg.checkpoint_every != AUTO:
        return cfg
    from ..models.arch import arch_of, load_config
    from ..models.checkpointing import checkpointed

    cuda = _cuda(cuda)
    usable, room = _room(memory, cuda)
    config = _estimated("--checkpoint-every", lambda: load_config(cfg.model))
    layers = _estimated("--checkpoint-every", lambda: arch_of(config).layers)
    need = _estimated("--checkpoint-every", lambda: {
        n: needed_bytes(dataclasses.replace(cfg, checkpoint_every=n), cfg.batch_size, cuda, config)
        for n in range(layers, 0, -1)})
    fitting = [n for n, b in need.items() if b <= usable]
    if not fitting:
        raise UserError(f"--checkpoint-every auto: with every layer checkpointed, batch {cfg.batch_size} x "
                        f"{cfg.max_length} is estimated at {_gib(need[1])}, more than the {room}; lower "
                        "--batch-size or --max-length, or add --quantization 4bit")
    n = fitting[0]
    recomputed = sum(checkpointed(i, n) for i in range(layers))
    log(f"checkpoint every auto: {n} ({recomputed} of {layers} layers recomputed; estimated {_gib(need[n])} of the "
        f"{room})")
    return dataclasses.replace(cfg, checkpoint_every=n)
