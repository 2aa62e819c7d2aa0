"""`llm-tuning compare`: a 3-method run on stories260K gives the full table, valid PNG plots, a failed row
for a broken method without stopping the others, and resumes only what is not done."""

import json
import os

import pytest
import yaml

from conftest import EN_DATA, STORIES, need_shared, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    cfg = {"title": "test", "model": need_shared(STORIES), "data": need_shared(EN_DATA), "output_dir": str(out),
           "budget_tokens": 6000, "batch_size": 4, "max_length": 128, "val_size": 12, "eval_records": 3,
           "max_new_tokens": 12, "samples": 2,
           "runs": [{"name": "lora-r4", "method": "lora", "lora_r": 4},
                    {"name": "broken", "method": "lora", "target_modules": ["no_such_module"]},
                    {"name": "prefix-proj", "method": "prefix", "prefix_projection": True},
                    {"name": "bitfit", "method": "bitfit"}]}
    path = tmp_path_factory.mktemp("cfg") / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("compare", "--config", str(path))
    assert r.returncode == 0, r.stderr
    return out, path, r


def test_table_has_every_column_filled_for_ok_runs(compare_run):
    out, _, r = compare_run
    results = {n: json.load(open(out / n / "result.json")) for n in ("lora-r4", "broken", "prefix-proj", "bitfit")}
    for name in ("lora-r4", "prefix-proj", "bitfit"):
        row = results[name]
        assert row["status"] == "ok"
        for key in ("trainable_params", "total_params", "adapter_bytes", "peak_rss_mib", "estimated_mib", "tokens_per_s", "wall_s",
                    "final_train_loss", "heldout_loss", "rouge_l", "bleu_4", "mergeable", "train_tokens"):
            assert row.get(key) is not None, (name, key)
        assert row["peak_rss_mib"] > 0 and row["process_peak_rss_mib"] > 100 and row["tokens_per_s"] > 0 and row["adapter_bytes"] > 0
    # same budget: every run trained on exactly the same real tokens
    assert len({results[n]["train_tokens"] for n in ("lora-r4", "prefix-proj", "bitfit")}) == 1
    assert results["lora-r4"]["mergeable"] and not results["prefix-proj"]["mergeable"]
    md = (out / "report.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| run |"))
    for col in ("trainable params", "trainable %", "adapter size", "training memory MiB (measured)",
                "training memory MiB (estimated)", "train tokens/s", "wall s", "final train loss", "held-out loss",
                "ROUGE-L", "BLEU-4", "mergeable"):
        assert col in header
    ok_rows = [l for l in md.splitlines() if l.startswith("| lora-r4 |") or l.startswith("| bitfit |")]
    assert len(ok_rows) == 2 and all("|  |" not in l for l in ok_rows)  # no empty cell
    assert "## Sample generations" in md and md.count("- *reference*:") == 2


def test_broken_method_is_a_failed_row_and_the_others_ran(compare_run):
    out, _, r = compare_run
    broken = json.load(open(out / "broken" / "result.json"))
    assert broken["status"] == "failed" and "no_such_module" in broken["error"]
    assert "broken: FAILED" in r.stdout and "[4/4] bitfit" in r.stdout
    assert "| broken | lora | failed:" in (out / "report.md").read_text()
    assert "class='failed'" in (out / "report.html").read_text()


def test_plots_are_valid_pngs_and_html_is_self_contained(compare_run):
    out, _, _ = compare_run
    for name in ("loss_curves.png", "heldout_loss_vs_params.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        from PIL import Image

        with Image.open(out / name) as im:
            assert im.size[0] > 400 and im.size[1] > 300
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_rerun_resumes_only_what_is_not_done(compare_run):
    out, path, _ = compare_run
    first = json.load(open(out / "bitfit" / "result.json"))
    os.remove(out / "bitfit" / "result.json")
    r = run_cli("compare", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "lora-r4: done already" in r.stdout and "prefix-proj: done already" in r.stdout
    assert "[4/4] bitfit (bitfit): training" in r.stdout
    again = json.load(open(out / "bitfit" / "result.json"))
    assert again["status"] == "ok"
    # its training had finished: nothing is trained again, and the row keeps that training's speed and memory
    assert "nothing left to train" in (out / "bitfit" / "train.log").read_text()
    for k in ("tokens_per_s", "peak_rss_mib", "train_tokens", "heldout_loss"):
        assert again[k] == first[k] and again[k], k


def test_force_reruns_from_scratch(compare_run, tmp_path):
    """--force replaces a finished run instead of resuming from its final checkpoint."""
    import shutil

    out, path, r = compare_run
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    cfg = yaml.safe_load(path.read_text())
    cfg.update(output_dir=str(copy), runs=[{"name": "bitfit", "method": "bitfit"}])
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(cfg))
    steps = int(r.stdout.split(" steps of ")[0].rsplit(" ", 1)[1])
    r2 = run_cli("compare", "--config", str(one), "--force")
    assert r2.returncode == 0, r2.stderr
    assert "[1/1] bitfit (bitfit): training" in r2.stdout
    metrics = json.load(open(copy / "bitfit" / "metrics.json"))
    assert metrics["steps"] == steps
    assert sorted(n for n in os.listdir(copy / "bitfit") if n.startswith("checkpoint-")) == [f"checkpoint-{steps}"]
