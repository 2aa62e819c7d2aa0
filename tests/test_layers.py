"""The layers hold (docs/architecture.md): import-linter's contracts in pyproject.toml pass on the sources, and
fail, naming the import, on a copy of the sources with one upward import or one circle planted in it."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root`/src, with the project's contracts."""
    if not os.path.exists(LINT):
        pytest.fail(f"{LINT} missing: the test extra installs import-linter")
    env = {**os.environ, "PYTHONPATH": os.path.join(root, "src")}
    return subprocess.run([LINT, "--no-cache", "--config", os.path.join(ROOT, "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def planted(tmp_path, path: str, line: str) -> str:
    """A copy of src/ with `line` added at the end of `path` (relative to the package)."""
    shutil.copytree(os.path.join(ROOT, "src", "llm_tuning"), tmp_path / "src" / "llm_tuning",
                    ignore=shutil.ignore_patterns("__pycache__", "static", "samples"))
    with open(tmp_path / "src" / "llm_tuning" / path, "a") as f:
        f.write(f"\n{line}\n")
    return str(tmp_path)


def test_the_sources_keep_every_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def test_an_upward_import_is_named(tmp_path):
    r = lint(planted(tmp_path, "methods/base.py", "from ..train import loop  # noqa"))
    assert r.returncode == 1
    assert "llm_tuning.methods is not allowed to import llm_tuning.train" in r.stdout
    assert "llm_tuning.methods.base -> llm_tuning.train" in r.stdout


def test_a_circle_between_siblings_is_named(tmp_path):
    # sampling is below generate (generate imports it): the reverse import closes a circle
    r = lint(planted(tmp_path, "infer/sampling.py", "from . import generate  # noqa"))
    assert r.returncode == 1
    assert "No cycles are allowed in llm_tuning.infer" in r.stdout
