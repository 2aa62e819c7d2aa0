"""What a run says about itself: the base model's held-out loss beside the trained one (metrics.json and the last
line), the evaluations during training measured as that final figure is, loss.png, and our model card in place of
PEFT's template (Hub metadata, the figures, the command that remakes the run)."""

import json
import shlex

import pytest
import yaml

from conftest import SAMPLE, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    records = json.load(open(SAMPLE, encoding="utf-8"))
    data, val = tmp / "train.json", tmp / "val.json"
    data.write_text(json.dumps(records[:40], ensure_ascii=False), encoding="utf-8")
    val.write_text(json.dumps(records[100:106], ensure_ascii=False), encoding="utf-8")
    out = tmp / "run"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", str(data), "--val-data", str(val), "--max-steps",
                "4", "--save-steps", "2", "--batch-size", "2", "--max-length", "96", "--lr", "0.01", "--lora-r", "4",
                "--lora-dropout", "0", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    return out, str(val), r, json.loads((out / "metrics.json").read_text())


def _eval(model, val, *adapter):
    r = run_cli("eval", "--model", model, *adapter, "--data", val, "--max-length", "96", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["loss"]


def test_the_run_ends_with_the_base_and_the_trained_held_out_loss(run, tiny_models):
    out, val, r, metrics = run
    base, after = metrics["base_eval_loss"], metrics["eval_loss"]
    assert base == pytest.approx(_eval(tiny_models["llama"], val), rel=1e-6)  # the untouched base, those records
    assert after == pytest.approx(_eval(tiny_models["llama"], val, "--adapter", str(out)), rel=1e-6)
    assert after != base  # trained
    assert r.stdout.strip().splitlines()[-1] == (f"[llm-tuning] held-out loss {base:.4f} -> {after:.4f} "
                                                 f"({after - base:+.4f})")
    assert metrics["heldout_records"] == 6


def test_the_evaluation_during_training_is_the_final_figure(run):
    _, _, r, metrics = run
    evaluated = {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e}
    assert sorted(evaluated) == [2, 4]
    assert evaluated[4] == pytest.approx(metrics["eval_loss"], rel=1e-9)  # the last step: the same weights
    assert f"held-out={metrics['eval_loss']:.4f}" in r.stderr  # the progress bar's name for it


def test_loss_png_draws_the_logged_losses_and_the_base(run):
    from llm_tuning.train.loss_plot import loss_figure

    out, _, _, metrics = run
    assert (out / "loss.png").read_bytes().startswith(PNG)
    fig = loss_figure(metrics["log_history"], metrics["base_eval_loss"], (4, metrics["eval_loss"]))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    train, heldout = lines["training loss"], lines["held-out loss"]
    assert list(train.get_xdata()) == [1, 2, 3, 4]
    assert list(train.get_ydata()) == [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert list(heldout.get_xdata()) == [2, 4] and heldout.get_ydata()[-1] == metrics["eval_loss"]
    base = next(line for label, line in lines.items() if label.startswith("base model"))
    assert base.get_linestyle() == "--" and set(base.get_ydata()) == {metrics["base_eval_loss"]}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_model_card_is_ours_with_hub_metadata_figures_and_command(run, tiny_models):
    from llm_tuning.cli import COMMANDS, build_parser
    from llm_tuning.cli import _config as config_of

    out, _, _, metrics = run
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["base_model"] == tiny_models["llama"] and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation" and "lora" in meta["tags"]
    assert "[More Information Needed]" not in card
    assert f"{metrics['base_eval_loss']:.4f} (base model) -> {metrics['eval_loss']:.4f}" in card
    command = card.split("```bash\n")[1].split("\n```")[0]
    argv = shlex.split(command)
    assert argv[:2] == ["llm-tuning", "train"]
    remade = config_of(next(c for c in COMMANDS if c.name == "train"), build_parser().parse_args(argv[1:]))
    assert remade.to_dict() == yaml.safe_load((out / "config.yaml").read_text())  # the command remakes the run


def test_merged_model_has_a_card_of_its_own(run, tiny_models, tmp_path):
    out, _, _, metrics = run
    merged = tmp_path / "merged"
    r = run_cli("merge", "--model", tiny_models["llama"], "--adapter", str(out), "--output", str(merged))
    assert r.returncode == 0, r.stderr
    card = (merged / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["base_model"] == tiny_models["llama"] and meta["library_name"] == "transformers"
    assert meta["base_model_relation"] == "merge" and f"{metrics['eval_loss']:.4f}" in card
    assert "[More Information Needed]" not in card


def test_base_eval_false_skips_the_base(tiny_models, tmp_path, capsys):
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    out = tmp_path / "o"
    train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, output_dir=str(out), max_steps=1, batch_size=2,
                      max_length=64, val_size=4, save_steps=10, base_eval=False))
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_eval_loss"] is None and "base model:" not in printed
    assert printed.strip().splitlines()[-1].startswith(f"[llm-tuning] held-out loss {metrics['eval_loss']:.4f} (")
    assert f"{metrics['eval_loss']:.4f} on 4 records (the base model's not measured" in (out / "README.md").read_text()
