"""Where a comparison's training processes run (compare's `executor:`). A run's points train one after another in
one worker process (lab/worker.py: torch and the model stack imported once per run, not per point); the executor
starts that process and waits for it, calling `poll()` meanwhile so that points are reported as they end.

- `local` (the default): a child process of compare, `parallel` of them at once. Where this machine has several
  GPUs, each process sees one (CUDA_VISIBLE_DEVICES), taken from a pool of the visible GPUs for its run: at most
  one run per GPU at a time.
- `ray`: each run's worker is a Ray task on a cluster (`ray_address`, or a local one started here), asking for
  one GPU where the cluster has GPUs, else `threads` CPUs (1 by default); Ray queues the tasks the cluster cannot
  run yet. The task starts the same worker process, which dies with the task (PR_SET_PDEATHSIG): a killed cluster
  leaves no training behind to race a resumed compare. The run folders are written by the task's node: on a
  cluster of several machines the output folder must be on a file system they all see.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import time

from ..errors import UserError


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs); [] without CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class LocalPool:
    """The worker processes as children of this one. gpus: the GPUs to share out (default: the visible ones);
    with two or more each process is pinned to one of them."""

    def __init__(self, gpus: list[str] | None = None):
        gpus = visible_gpus() if gpus is None else gpus
        self.free = None
        if len(gpus) > 1:
            self.free = queue.Queue()
            for g in gpus:
                self.free.put(g)

    @contextlib.contextmanager
    def _pinned(self):
        if self.free is None:
            yield {}
            return
        gpu = self.free.get()  # waits while every GPU has a run
        try:
            yield {"CUDA_VISIBLE_DEVICES": gpu}
        finally:
            self.free.put(gpu)

    def run(self, cmd: list[str], env: dict, log_path: str, poll) -> int:
        with self._pinned() as pinned, open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env, **pinned})
            while proc.poll() is None:
                time.sleep(0.5)
                poll()
        return proc.returncode

    def close(self):
        pass


def _die_with_parent():
    """In the child, before exec: SIGKILL when the parent (the Ray task) dies (Linux; elsewhere nothing)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_task(cmd: list[str], env: dict, log_path: str, cwd: str) -> int:
    """Runs on a Ray worker: the training worker process, its output appended to log_path; its exit code."""
    env = {**os.environ, **env}
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not _asked_gpu():
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU task on a GPU node: Ray leaves every GPU visible
    with open(log_path, "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                              preexec_fn=_die_with_parent).returncode


def _asked_gpu() -> bool:
    import ray

    return bool(ray.get_gpu_ids())


class RayCluster:
    """The worker processes as Ray tasks. address: an existing cluster's (ray.init(address=...)), or None for a
    local one started here (and stopped by close())."""

    def __init__(self, address: str | None, threads: int | None, log):
        try:
            import ray
        except ImportError:
            raise UserError("executor: ray needs Ray: pip install 'llm-tuning[ray]'") from None
        self.ray, self.started = ray, False
        if not ray.is_initialized():
            t = time.time()
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                raise UserError(f"executor: ray: cannot reach the Ray cluster at {address}: "
                                f"{str(e).splitlines()[0]}") from None
            self.started = True
            log(f"ray: {'connected to ' + address if address else 'a local cluster started'} "
                f"in {time.time() - t:.1f} s")
        resources = ray.cluster_resources()
        # max_retries 0: a point that killed its worker would be trained again from scratch by Ray's retry
        self.options = {"max_retries": 0, **({"num_gpus": 1, "num_cpus": 0} if resources.get("GPU") else
                                             {"num_cpus": threads or 1})}
        self.task = ray.remote(_worker_task)
        log(f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each run a task asking for "
            + ("1 GPU" if "num_gpus" in self.options else f"{self.options['num_cpus']} CPU(s)"))

    def run(self, cmd: list[str], env: dict, log_path: str, poll) -> int:
        ref = self.task.options(**self.options).remote(cmd, env, log_path, os.getcwd())
        while not self.ray.wait([ref], timeout=0.5)[0]:
            poll()
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            # the cluster, not the training, failed (a node died, the cluster was stopped): the points not done
            # are not marked failed, so that compare run again resumes them
            first = next((line for line in str(e).splitlines() if line.strip() and "ray::" not in line), str(e))
            raise UserError(f"executor: ray: the task training {os.path.dirname(log_path)} failed: {first.strip()}; "
                            "run compare again to resume the points not done") from None

    def close(self):
        if self.started:
            self.ray.shutdown()


def make_executor(cc, log):
    """The executor of a CompareConfig (cc.executor, cc.ray_address, cc.threads)."""
    if cc.executor == "ray":
        return RayCluster(cc.ray_address, cc.threads, log)
    return LocalPool()


def worker_command(jobs_path: str) -> list[str]:
    return [sys.executable, "-m", "llm_tuning.lab.worker", jobs_path]
