"""--report-to: the run's logs also go to a tracker through the Trainer's own integration."""

import glob
import json
import math

import pytest

from conftest import SAMPLE, run_cli


def _tensorboard_scalars(run_dir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(f"{run_dir}/runs/*/events.out.tfevents.*")
    assert len(files) == 1, files
    acc = EventAccumulator(files[0], size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_file_holds_the_losses_of_log_jsonl(tiny_models, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--method", "lora", "--max-steps", "5",
                "--batch-size", "2", "--max-length", "64", "--val-size", "4", "--eval-steps", "2",
                "--save-steps", "100", "--report-to", "tensorboard", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_losses = {e["step"]: e["loss"] for e in logged if "loss" in e}
    eval_losses = {e["step"]: e["eval_loss"] for e in logged if "eval_loss" in e}
    assert sorted(train_losses) == [1, 2, 3, 4, 5] and {2, 4} <= set(eval_losses)

    scalars = _tensorboard_scalars(str(out))
    assert set(scalars["train/loss"]) == set(train_losses)
    for step, loss in train_losses.items():
        assert math.isclose(scalars["train/loss"][step], loss, rel_tol=1e-6), step  # float32 in the event file
    assert set(scalars["eval/loss"]) == set(eval_losses)
    for step, loss in eval_losses.items():
        assert math.isclose(scalars["eval/loss"][step], loss, rel_tol=1e-6), step


def test_report_to_defaults_to_none_and_rejects_an_unknown_tracker(tiny_models, tmp_path):
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--max-steps", "1", "--batch-size", "2",
                "--max-length", "64", "--save-steps", "100", "--output-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run" / "runs").exists()  # no tracker unless asked
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--report-to", "comet",
                "--output-dir", str(tmp_path / "other"))
    assert r.returncode == 2 and "--report-to" in r.stderr and "Traceback" not in r.stderr


def test_a_tracker_that_is_not_installed_is_refused_before_the_model_loads(tiny_models, tmp_path):
    import importlib.util

    missing = next((t for t in ("wandb", "mlflow") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("wandb and mlflow are both installed here")
    out = tmp_path / "run"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--report-to", missing,
                "--output-dir", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--report-to {missing}: the {missing} package is not installed" in r.stderr
    assert not out.exists()  # refused before the output folder (and the model) was touched
