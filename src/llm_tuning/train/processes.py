"""Several processes training one run (torchrun, `accelerate launch`: DDP): how many there are, which is the main
one, the process group and its barrier, and the launch mistakes that would otherwise go unsaid.
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..log import log


def world_size() -> int:
    """Processes of this run, as torchrun / `accelerate launch` export it (1 when started alone)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def is_main_process() -> bool:
    """Rank 0 (or started alone): the process that owns the run folder and prints the log lines."""
    return int(os.environ.get("RANK") or 0) == 0


def start_process_group():
    """Join the process group now (it is up before the Trainer makes its own, which then reuses it): the output
    folder is prepared before anything heavy. Gloo on CPU, NCCL on GPU, as the Trainer's TrainingArguments pick."""
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def barrier():
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def gathered(value) -> list:
    """Every process's `value`, in rank order (all of them must call this); [value] when training alone."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _asked_processes() -> str | None:
    """How many processes `accelerate launch` was asked for, read from its command line (our parent); None if
    this process was not started by a multi-process `accelerate launch`."""
    if "ACCELERATE_USE_CPU" not in os.environ or "MASTER_PORT" not in os.environ:
        return None  # accelerate's single-process launcher sets MASTER_PORT only when asked for more than one
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "more than one"
    for i, a in enumerate(argv):
        if a.startswith(("--num_processes=", "--num-processes=")):
            return a.split("=", 1)[1]
        if a in ("--num_processes", "--num-processes") and i + 1 < len(argv):
            return argv[i + 1]
    return "more than one"


def warn_about_launch():
    """What accelerate 1.15 changes silently: `accelerate launch --cpu --num_processes 2` starts ONE plain process,
    and an FSDP config on processes without GPUs runs plain DDP (it enables FSDP for accelerator devices only)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        import torch

        if not torch.cuda.is_available():
            log("warning: the accelerate config asks for FSDP, but accelerate enables FSDP on GPUs (and other "
                "accelerators) only: these CPU processes train as plain DDP (every process holds the whole model)")
    if world_size() > 1 or any(os.environ.get(v) for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return
    asked = _asked_processes()
    if asked and asked != "1":
        log(f"warning: accelerate launch was asked for {asked} processes but started only this one (its --cpu "
            "launcher runs N processes only through mpirun); this run trains on 1 process. For N processes run "
            "`accelerate launch --multi_gpu --num_processes N $(which llm-tuning) train ...` (on a machine without "
            "GPUs it starts N CPU processes over gloo) or `torchrun --nproc_per_node N $(which llm-tuning) train ...`")


# the first transformers that resumes several CPU processes (it loads the optimizer state onto "cpu", not "cpu:0")
RESUMES_ON_CPU_PROCESSES = "5.18"


def check_resume_under_processes():
    """transformers before 5.18 loads a resumed optimizer state onto TrainingArguments.device when several
    processes train: on a CPU that is "cpu:0", which torch.load cannot restore (a traceback in every process)."""
    if world_size() == 1:
        return
    import torch
    import transformers
    from packaging.version import Version

    need = RESUMES_ON_CPU_PROCESSES
    if torch.cuda.is_available() or Version(transformers.__version__) >= Version(need):
        return
    raise UserError(f"--resume under {world_size()} processes on a CPU needs transformers >= {need} (transformers "
                    f"{transformers.__version__} cannot load the checkpoint's optimizer state there); "
                    f"pip install -U 'transformers>={need}', then run the same command again")
