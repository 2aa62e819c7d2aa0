"""Does every method learn the same on CUDA as on the CPU? Issue 21's target: each method's loss on CUDA within 1 %
of the CPU fp32 run after 20 steps on stories260K.

Every variant of examples/compare_stories260k_en.yaml (its `runs:` list, so the two stay the same 17) trains 20
steps of batch 8 (max length 256, seed 0, its method's default rate) on the English alpaca-gpt4 records, each
`llm-tuning train` in its own process; the figure compared is the held-out loss after training on a 60-record
validation split (`--val-size 60`: no dropout, the same records on both devices), beside the last step's training
loss (dropout masks differ between the devices' generators, so that one is not compared).

    .venv/bin/python benchmarks/cuda_parity.py --reference     # here, CPU fp32: writes benchmarks/cuda_parity_cpu.json
    PROBE=benchmarks/cuda_parity.py bash .gpu/run.sh           # on the GPU machine: fp32 and bf16 against it

The reference file is committed, so the device call only trains the CUDA side. Data: .gpu/data when it is there
(the GPU machine), else ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GPU_DATA = os.path.join(ROOT, ".gpu", "data")  # laid by ../shared/gpu/prepare.sh for the device call
DATA = GPU_DATA if os.path.isdir(GPU_DATA) else os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(DATA, "models", "stories260K-hf")
EN = os.path.join(DATA, "alpaca_gpt4_en", "alpaca_en_train.json")
REFERENCE = os.path.join(HERE, "cuda_parity_cpu.json")
MAX_LENGTH, SEED, VAL_SIZE = 256, 0, 60  # base_loss() splits and evaluates as train does with these
COMMON = ["--max-steps", "20", "--batch-size", "8", "--max-length", str(MAX_LENGTH), "--seed", str(SEED),
          "--val-size", str(VAL_SIZE), "--save-steps", "100000", "--cache", "false", "--quiet", "true",
          "--overwrite", "true"]
TOLERANCE = 0.01


def variants() -> list[dict]:
    """The compare example's runs (name, method and the method's options), read from its YAML."""
    import yaml

    with open(os.path.join(ROOT, "examples", "compare_stories260k_en.yaml")) as f:
        return yaml.safe_load(f)["runs"]


def flags_of(run: dict) -> list[str]:
    return [a for k, v in run.items() if k != "name" for a in (f"--{k.replace('_', '-')}", str(v))]


def train(run: dict, precision: str, work: str) -> dict:
    out = os.path.join(work, f"{run['name']}-{precision}")
    cmd = [sys.executable, "-m", "llm_tuning", "train", "--model", MODEL, "--data", EN, "--output-dir", out,
           "--precision", precision, *COMMON, *flags_of(run)]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        tail = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()][-2:]
        return {"rc": p.returncode, "tail": tail}
    m = json.load(open(os.path.join(out, "metrics.json")))
    last = [h["loss"] for h in m["log_history"] if "loss" in h][-1]  # the final entry is the Trainer's summary
    return {"rc": 0, "eval_loss": m["eval_loss"], "last_train_loss": last,
            "steps": m["steps"], "seconds": round(time.time() - t, 1)}


def base_loss(work: str) -> float:
    """The untrained model's loss on the same 60 validation records (`llm-tuning eval`; equal to train's own
    validation loss to the last digit when given a trained adapter): the baseline every row is read against."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from llm_tuning.data.formats import split_records

    with open(EN) as f:
        _, val = split_records(json.load(f), VAL_SIZE, SEED)
    path = os.path.join(work, "val.json")
    with open(path, "w") as f:
        json.dump(val, f, ensure_ascii=False)
    p = subprocess.run([sys.executable, "-m", "llm_tuning", "eval", "--model", MODEL, "--data", path,
                        "--max-length", str(MAX_LENGTH), "--json", "true"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["loss"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", action="store_true", help="train the CPU fp32 side and write the reference file")
    ap.add_argument("--precisions", default="fp32,bf16", help="CUDA side: the precisions to train (default fp32,bf16)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all 17)")
    args = ap.parse_args()
    runs = [r for r in variants() if not args.only or r["name"] in args.only.split(",")]
    work = tempfile.mkdtemp(prefix="cuda-parity-")
    if args.reference:
        ref = {"base": {"eval_loss": base_loss(work)}}
        print("base", ref["base"], flush=True)
        for r in runs:
            ref[r["name"]] = train(r, "fp32", work)
            print(r["name"], json.dumps(ref[r["name"]]), flush=True)
        with open(REFERENCE, "w") as f:
            json.dump({"device": "cpu", "precision": "fp32", "flags": COMMON, "runs": ref}, f, indent=1)
        print(f"wrote {REFERENCE}")
        return 0
    ref = json.load(open(REFERENCE))["runs"]
    precisions = args.precisions.split(",")
    print(f"base (untrained) held-out loss: CPU {ref['base']['eval_loss']:.4f}, here {base_loss(work):.4f}\n")
    import torch

    here = "CUDA" if torch.cuda.is_available() else "CPU"  # a run without a GPU checks the CPU against itself
    print("| variant | CPU fp32 held-out loss | " + " | ".join(f"{here} {p} | off by" for p in precisions) + " |")
    print("|---|---|" + "---|---|" * len(precisions))
    worst = 0.0
    for r in runs:
        cells = []
        for p in precisions:
            got = train(r, p, work)
            if got["rc"]:
                cells += [f"failed: {' / '.join(got['tail'])}", ""]
                continue
            off = got["eval_loss"] / ref[r["name"]]["eval_loss"] - 1
            worst = max(worst, abs(off)) if p == "fp32" else worst
            cells += [f"{got['eval_loss']:.4f}", f"{100 * off:+.2f} %"]
        print(f"| {r['name']} | {ref[r['name']]['eval_loss']:.4f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nlargest fp32 difference ({here}): {100 * worst:.2f} % (target on CUDA: within {100 * TOLERANCE:.0f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
