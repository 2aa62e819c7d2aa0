"""`python -m llm_tuning.lab.worker JOBS.json`: one process trains several points of a comparison one after
another, as `llm-tuning train --config POINT/train.yaml` would, so torch, transformers and PEFT are imported once
per run rather than once per point (on two cores that import is most of a short point's time).

JOBS.json: a list of {"config": train.yaml, "log": train.log, "status": status.json}. Each point's output goes
to its own log; its status.json (exit code as the command would give, error line, wall seconds, and whether it
was the first point of the process) is written when it ends, so a point the process did not reach has none.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback


@contextlib.contextmanager
def _output_to(path: str):
    """stdout and stderr (the file descriptors: the progress bar and libraries too) appended to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _train_one(config_path: str) -> tuple[int, str]:
    from ..config import TrainConfig
    from ..errors import UserError
    from ..options import build_config, load_yaml
    from ..train.loop import train_process

    try:
        train_process(build_config(TrainConfig, load_yaml(config_path), {}, config_path))
        return 0, ""
    except UserError as e:
        print(f"llm-tuning train: error: {e}", file=sys.stderr)
        return 2, str(e)
    except Exception as e:  # this point's failure; the process goes on with the next one
        traceback.print_exc()
        return 1, f"{type(e).__module__}.{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(jobs_path: str) -> int:
    from ..models.load import quiet_libraries

    quiet_libraries()
    with open(jobs_path) as f:
        jobs = json.load(f)
    for i, job in enumerate(jobs):
        t = time.time()
        with _output_to(job["log"]):
            code, error = _train_one(job["config"])
        status = {"code": code, "error": error, "wall_s": round(time.time() - t, 1), "first_in_process": i == 0}
        with open(job["status"] + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(job["status"] + ".tmp", job["status"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
