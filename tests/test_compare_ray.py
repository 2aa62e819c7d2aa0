"""compare's executors: the tour's comparison (examples/compare_tour.yaml, shortened) with `executor: ray` on a
local two-CPU Ray cluster writes the report figures the local pool writes for the same seeds; the local pool pins
one GPU per worker process where there are several (what it sets, checked without a GPU)."""

import json
import os
import sys
import threading
import time

import pytest
import yaml

from conftest import ROOT, run_cli
from llm_tuning.lab.executors import LocalPool

FIGURES = ("val_loss", "heldout_loss", "rouge_l", "bleu_4", "forget_loss", "trainable_params", "lr")


def _compare(tmp_path, model, **settings):
    with open(os.path.join(ROOT, "examples", "compare_tour.yaml")) as f:
        cfg = yaml.safe_load(f)
    out = tmp_path / settings.get("executor", "local")
    # the tour's comparison, shorter: two of its methods (a prompt-learning one and LoRA), one seed, 6 steps,
    # forgetting on 4 sampled texts
    cfg["runs"] = [run for run in cfg["runs"] if run["name"] in ("prefix", "lora")]
    cfg.update(model=model, data=os.path.join(ROOT, cfg["data"]), output_dir=str(out), max_steps=6,
               eval_records=2, max_new_tokens=8, forget_texts=4, forget_tokens=16, threads=1, **settings)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("compare", "--config", str(path))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "compare.json") as f:
        return json.load(f), r.stdout


@pytest.mark.engines
def test_ray_executor_writes_the_local_pools_figures(tiny_models, tmp_path):
    pytest.importorskip("ray")
    local, _ = _compare(tmp_path, tiny_models["llama"], parallel=2)
    on_ray, stdout = _compare(tmp_path, tiny_models["llama"], executor="ray")
    assert "ray: a local cluster started" in stdout and "each run a task asking for 1 CPU(s)" in stdout
    assert [r["name"] for r in on_ray["runs"]] == [r["name"] for r in local["runs"]] == ["prefix", "lora"]
    for a, b in zip(local["runs"], on_ray["runs"]):
        assert a["status"] == b["status"] == "ok", (a.get("error"), b.get("error"))
        assert {k: a.get(k) for k in FIGURES} == {k: b.get(k) for k in FIGURES}, a["name"]
    # a second invocation finds every point done (result.json) and trains nothing
    again, stdout = _compare(tmp_path, tiny_models["llama"], executor="ray")
    assert stdout.count("done already (result.json), skipped") == 2 and "point(s) of" not in stdout
    assert [r["heldout_loss"] for r in again["runs"]] == [r["heldout_loss"] for r in on_ray["runs"]]


def _visible_devices_seen(pool, n, tmp_path):
    """n workers started at once through the pool, each printing the CUDA_VISIBLE_DEVICES it got and staying 1 s."""
    cmd = [sys.executable, "-c", "import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); "
                                 "time.sleep(1)"]
    folder = tmp_path / f"pool{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    logs = [folder / f"worker{i}.log" for i in range(n)]
    codes = []
    threads = [threading.Thread(target=lambda log=log: codes.append(pool.run(cmd, {}, str(log), lambda: None)))
               for log in logs]
    t = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert codes == [0] * n
    return [log.read_text().strip() for log in logs], time.time() - t


def test_local_pool_pins_one_gpu_per_worker(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen, _ = _visible_devices_seen(LocalPool(gpus=["0", "1"]), 2, tmp_path)
    assert sorted(seen) == ["0", "1"]  # two at once: one GPU each
    seen, wall = _visible_devices_seen(LocalPool(gpus=["0", "1"]), 3, tmp_path)
    assert sorted(seen)[:2] == ["0", "0"] or sorted(seen)[1:] == ["1", "1"]  # the third waited for a free GPU
    assert set(seen) == {"0", "1"} and wall >= 2
    seen, _ = _visible_devices_seen(LocalPool(gpus=["3"]), 2, tmp_path)
    assert seen == ["unset", "unset"]  # one GPU: nothing to share out, the processes see what compare sees


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from llm_tuning.lab.executors import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
