"""The README's tour works in a fresh folder, and a second time over what the first left.

The commands are read from the README (tests/tour.py), so an edit of the tour is what is tested. The folder
holds what a clone gives the tour (the bundled sample, the example YAML files); the slow commands get a small
budget (2 steps, a few records); the comparison's YAML gets the same (2 steps, 2 answered records, 2 of its
runs). Both passes measured at 91 s wall / 68 s CPU on 2 shared cores at load 4.5 (164 s wall at load 8)."""

import json
import os
import re
import shutil
import subprocess
import sys

import yaml

from conftest import ROOT
from tour import small_python, tour_commands, with_small_budget

CHAT_INPUT = "说出一种水果。\n/exit\n"


def _clone(folder):
    """What a fresh clone gives the tour: the sources' sample data and the example YAML files."""
    shutil.copytree(os.path.join(ROOT, "src", "llm_tuning", "data", "samples"),
                    folder / "src" / "llm_tuning" / "data" / "samples")
    (folder / "examples").mkdir()
    for name in os.listdir(os.path.join(ROOT, "examples")):
        if name.endswith(".yaml"):
            shutil.copy(os.path.join(ROOT, "examples", name), folder / "examples" / name)
    shutil.copytree(os.path.join(ROOT, "examples", "harness"), folder / "examples" / "harness")  # eval --tasks-dir
    tour = folder / "examples" / "compare_tour.yaml"
    cfg = yaml.safe_load(tour.read_text())
    # two of its runs, trained at once (each point is a process of its own: ~10 s of start-up on a busy CPU)
    cfg.update(max_steps=2, eval_records=2, max_new_tokens=8, runs=cfg["runs"][-2:], parallel=2, threads=1)
    tour.write_text(yaml.safe_dump(cfg, allow_unicode=True))


def _files(folder, top):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder / top)
                  for n in names)


def _replay(folder, todo):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tour.py"), str(todo)], cwd=folder,
                       input=CHAT_INPUT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_readme_tour_runs_twice_in_a_fresh_folder(tmp_path):
    commands, python = tour_commands()
    names = [c[0] for c in commands]
    # the parse found the whole tour, --resume included (a README edit that breaks the parse fails here, not silently)
    assert names.count("train") == 11 and {"init-model", "merge", "generate", "eval", "chat", "compare",
                                           "estimate", "quantlab"} <= set(names), names
    clone = tmp_path / "clone"
    _clone(clone)
    todo = tmp_path / "todo.json"
    todo.write_text(json.dumps({"commands": [with_small_budget(c) for c in commands],
                                "python": small_python(python)}))
    before = _files(clone, "examples") + _files(clone, "src")
    first = _replay(clone, todo)
    for path in ("runs/tiny/config.json", "runs/lora/llm_tuning.json", "runs/qlora/llm_tuning.json",
                 "runs/yaml/llm_tuning.json", "runs/merged/config.json", "runs/compare/report.md",
                 "runs/quantlab/report.md", "runs/prefix/harness_results.json"):
        assert (clone / path).exists(), path
    assert yaml.safe_load((clone / "runs/yaml/config.yaml").read_text())["lr"] == 3e-4  # the flag won
    second = _replay(clone, todo)
    skipped = [line for line in second.stdout.splitlines() if "done already (result.json)" in line]
    assert skipped, second.stdout  # the comparison resumed, nothing retrained
    # two runs at once (parallel: 2), each line whole: none ran into another ("...skipped[2/2] ...")
    assert all(re.fullmatch(r"\[\d/\d\] \S+ lr \S+ seed 0: done already \(result.json\), skipped", line)
               for line in skipped), skipped
    assert _files(clone, "examples") + _files(clone, "src") == before  # the tour writes under runs/ only
    assert "Traceback" not in first.stderr + second.stderr
