"""glibc's malloc as train sets it (src/llm_tuning/memory/allocator.py) against its defaults, at Bloom-1b4's shape.

`llm-tuning train` (LoRA, fp32, batch 4 x 256, with and without gradient checkpointing; real_size.py's random
Bloom-1b4-zh and its 48 alpaca_gpt4_zh records) in a child process, from a checkout that sets the allocator
(--ours, default this one) and one that does not (--baseline, e.g. a worktree of an earlier commit), alternating.
For each run: the whole process's peak RSS, its CPU seconds and page faults (wait4's rusage), and the CPU seconds
of each step after the first (the child's /proc/PID/stat, read as log.jsonl gains a step). CPU seconds hold up
where wall seconds do not, on a machine shared with other work; the estimate is `llm-tuning estimate`'s.

    .venv/bin/python benchmarks/allocator_ab.py --baseline ../main-before --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import real_size  # noqa: E402  (the model, the data, the estimate)

FLAGS = ["--method", "lora", "--batch-size", "4", "--max-length", "256"]
GC = ["--gradient-checkpointing", "true"]
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    except (OSError, IndexError):
        return None


def _steps_logged(log: str) -> int:
    try:
        with open(log) as f:
            return sum('"loss"' in line for line in f)
    except OSError:
        return 0


def run(checkout: str, model: str, data: str, out: str, flags: list[str], steps: int) -> dict:
    """One `llm-tuning train` from `checkout`'s src/: peak RSS, CPU seconds, page faults, CPU seconds per step."""
    cmd = [sys.executable, "-m", "llm_tuning", "train", "--model", model, "--data", data, "--output-dir", out,
           "--overwrite", "--max-steps", str(steps), "--save-steps", "1000000", "--cache", "false", *flags]
    env = {**os.environ, "PYTHONPATH": os.path.join(checkout, "src")}
    log, at_step = os.path.join(out, "log.jsonl"), []
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=checkout)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if _steps_logged(log) > len(at_step):
                at_step.append(_cpu_seconds(p.pid))
            time.sleep(0.25)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed: see {out}.log")
    return {"peak_gib": usage.ru_maxrss / 2**20, "cpu_s": usage.ru_utime + usage.ru_stime, "sys_s": usage.ru_stime,
            "page_faults": usage.ru_minflt, "step_cpu_s": [b - a for a, b in zip(at_step, at_step[1:])]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="a checkout whose train leaves glibc's malloc at its defaults")
    ap.add_argument("--ours", default=ROOT, help="a checkout whose train sets it (default: this one)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="steps per run; the first is not timed")
    ap.add_argument("--work", default="/tmp/llm-tuning-real-size", help="real_size.py's folder (the model is reused)")
    a = ap.parse_args()
    model, data = os.path.join(a.work, "bloom-real-shape"), os.path.join(a.work, "zh48.json")
    if not os.path.exists(model):
        raise SystemExit(f"{model} missing: run benchmarks/real_size.py --work {a.work} --only bloom-fp32-lora first")
    print("| checkpointing | allocator | peak RSS GiB | estimate GiB | peak / estimate | CPU s of the steps "
          "after the first | system s | page faults |\n|---|---|---|---|---|---|---|---|", flush=True)
    for r in range(a.rounds):
        for gc in (True, False):
            flags = FLAGS + (GC if gc else [])
            est = real_size.estimate(model, flags)["total"] / 2**30
            for tag, name, checkout in (("defaults", "glibc's defaults", a.baseline), ("set", "set by train", a.ours)):
                out = os.path.join(a.work, "allocator_ab", f"{'gc' if gc else 'nogc'}-{tag}-{r}")
                m = run(os.path.abspath(checkout), model, data, out, flags, a.steps)
                print(f"| {'yes' if gc else 'no'} | {name} | {m['peak_gib']:.2f} | {est:.2f} | "
                      f"{m['peak_gib'] / est:.3f} | {sum(m['step_cpu_s']):.1f} | {m['sys_s']:.1f} | "
                      f"{m['page_faults']:,} |", flush=True)
                with open(os.path.join(a.work, "allocator_ab.jsonl"), "a") as f:
                    f.write(json.dumps({"gc": gc, "allocator": name, "round": r, "estimate_gib": est, **m}) + "\n")


if __name__ == "__main__":
    main()
