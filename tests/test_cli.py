"""The real `llm-tuning` command end to end: train (YAML + flags), files, PEFT loading, merge, generate, eval,
resume after SIGKILL, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, SAMPLE, run_cli


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lora"
    cfg = tmp_path_factory.mktemp("cfg") / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_models["llama"], "data": SAMPLE, "method": "lora", "max_steps": 4,
                                   "lr": 0.5, "batch_size": 4, "max_length": 96, "val_size": 8, "lora_dropout": 0.0}))
    r = run_cli("train", "--config", str(cfg), "--output-dir", str(out), "--lr", "0.003", "--save-steps", "2")
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_writes_adapter_tokenizer_config_and_metrics(lora_run, tiny_models):
    out, r = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "metrics.json",
                 "log.jsonl", "llm_tuning.json"):
        assert (out / name).exists(), name
    assert "trainable params: 3,584 / total:" in r.stdout  # 2 layers x r=8 x ((64+64) for q + (64+32) for v)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["lr"] == 0.003 and resolved["max_steps"] == 4  # the flag beat the file; the file beat defaults
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [e["step"] for e in metrics["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4]
    assert any("eval_loss" in e for e in metrics["log_history"]) and metrics["eval_loss"] > 0
    assert metrics["trainable_params"] == 3584


def test_adapter_loads_with_plain_peft(lora_run, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = lora_run
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), str(out))
    b = load_file(str(out / "adapter_model.safetensors"))
    key = next(k for k in b if "lora_B" in k)
    assert b[key].abs().sum() > 0  # trained, not the zero init
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 3584


def test_merge_generate_eval_cli(lora_run, tiny_models, tmp_path):
    out, _ = lora_run
    merged = tmp_path / "merged"
    r = run_cli("merge", "--model", tiny_models["llama"], "--adapter", str(out), "--output", str(merged))
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(str(merged))).__name__ == "LlamaForCausalLM"

    r = run_cli("generate", "--model", tiny_models["llama"], "--adapter", str(out), "--prompt", "说出一种水果。",
                "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != ""

    evals = {}
    for args in (["--adapter", str(out)], []):
        model = tiny_models["llama"] if args else str(merged)
        r = run_cli("eval", "--model", model, *args, "--data", SAMPLE, "--limit", "6", "--json", "--max-length", "96")
        assert r.returncode == 0, r.stderr
        evals[bool(args)] = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(evals[True]) == {"loss", "perplexity", "records", "tokens"}
    assert evals[True]["records"] == 6 and evals[True]["tokens"] > 6
    assert abs(evals[True]["perplexity"] - torch.tensor(evals[True]["loss"]).exp().item()) < 1e-3 * evals[True]["perplexity"]
    assert abs(evals[True]["loss"] - evals[False]["loss"]) < 1e-5  # merged model == adapter on base


def test_eval_generate_scores_the_answers_it_writes(lora_run, tiny_models, tmp_path):
    from llm_tuning.evaluate.text_metrics import score

    out, _ = lora_run
    predictions = tmp_path / "predictions.jsonl"
    r = run_cli("eval", "--model", tiny_models["llama"], "--adapter", str(out), "--data", SAMPLE, "--limit", "3",
                "--max-length", "96", "--generate", "--max-new-tokens", "6", "--predictions", str(predictions),
                "--json")
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout.strip().splitlines()[-1])
    lines = [json.loads(l) for l in predictions.read_text(encoding="utf-8").splitlines()]
    records = json.load(open(SAMPLE, encoding="utf-8"))[:3]
    assert [l["reference"] for l in lines] == [rec["output"] for rec in records]
    assert all(rec["instruction"] in l["prompt"] for rec, l in zip(records, lines))
    expected = score([l["prediction"] for l in lines], [l["reference"] for l in lines])
    assert {k: scores[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")} == {
        k: expected[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")}


def test_eval_run_scores_exactly_the_records_the_run_held_out(lora_run):
    from llm_tuning.data.formats import load_records, split_records

    out, _ = lora_run
    metrics = json.loads((out / "metrics.json").read_text())
    # the run's model, adapter, max length 96 and its 8 held-out records (those with an answer left within 96
    # tokens scored), from its folder alone
    r = run_cli("eval", "--run", str(out), "--json")
    assert r.returncode == 0, r.stderr
    evaluated = json.loads(r.stdout.strip().splitlines()[-1])
    assert evaluated["loss"] == pytest.approx(metrics["eval_loss"], abs=1e-6)
    g = run_cli("eval", "--run", str(out), "--limit", "2", "--generate", "--max-new-tokens", "4")
    assert g.returncode == 0, g.stderr
    heldout = split_records(load_records(SAMPLE).records, 8, 42)[1]
    assert [l[len("reference: "):] for l in g.stdout.splitlines() if l.startswith("reference: ")] == [
        rec["output"].splitlines()[0] for rec in heldout[:2]]
    assert g.stdout.count("\nanswer: ") == 2 and "| rouge-l |" in g.stdout


def test_eval_split_needs_a_run_folder_with_held_out_records(lora_run, tmp_path):
    out, _ = lora_run
    r = run_cli("eval", "--run", str(tmp_path))
    assert r.returncode == 2 and "no config.yaml, so not a folder `llm-tuning train` wrote" in r.stderr
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load((out / "config.yaml").read_text()),
                                                          "val_size": 0}))
    r = run_cli("eval", "--run", str(tmp_path))
    assert r.returncode == 2 and "held out no records" in r.stderr, r.stderr
    r = run_cli("eval", "--model", "m", "--split", "heldout", "--data", SAMPLE)
    assert r.returncode == 2 and "needs the run: --run DIR" in r.stderr


def test_merge_refuses_prompt_methods(tiny_models, tmp_path):
    out = tmp_path / "prefix"
    r = run_cli("train", "--model", tiny_models["bloom"], "--data", SAMPLE, "--method", "prefix", "--max-steps", "1",
                "--output-dir", str(out), "--max-length", "64")
    assert r.returncode == 0, r.stderr
    r = run_cli("merge", "--model", tiny_models["bloom"], "--adapter", str(out), "--output", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "a prefix adapter cannot be merged" in r.stderr and "--adapter ADAPTER_DIR" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m").exists()


def _train_args(model, out, extra=()):
    return ["train", "--model", model, "--data", SAMPLE, "--method", "lora", "--max-steps", "30", "--save-steps", "5",
            "--batch-size", "2", "--max-length", "96", "--lora-dropout", "0.1", "--seed", "7",
            "--output-dir", str(out), *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_models, tmp_path):
    model = tiny_models["llama"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(*_train_args(model, full)).returncode == 0

    proc = subprocess.Popen([sys.executable, "-m", "llm_tuning", *_train_args(model, killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-10" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "llm_tuning.json").exists()  # it really stopped mid-way

    # A save interrupted by a kill: a later checkpoint without its COMPLETE marker and a truncated file.
    half = killed / "checkpoint-25"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"\x00" * 10)

    r = run_cli(*_train_args(model, killed, ["--resume"]))
    assert r.returncode == 0, r.stderr
    assert "removing" in r.stdout and "checkpoint-25" in r.stdout and "resuming from" in r.stdout
    a = load_file(str(full / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # Resuming the finished run trains nothing more (transformers alone would train a 31st step), and keeps the
    # training figures of the process that trained (not 0 s and this process's memory).
    trained = json.loads((killed / "metrics.json").read_text())
    r = run_cli(*_train_args(model, killed, ["--resume"]))
    assert r.returncode == 0, r.stderr
    assert "nothing left to train" in r.stdout
    again = json.loads((killed / "metrics.json").read_text())
    assert again["steps"] == 30 and again["figures_from_earlier_process"] is True
    assert trained["train_seconds"] > 0
    for k in ("train_seconds", "train_tokens", "peak_rss_mib", "rss_before_model_mib", "train_loss"):
        assert again[k] == trained[k], k
    c = load_file(str(killed / "adapter_model.safetensors"))
    for k in a:
        assert torch.equal(a[k], c[k]), k


@pytest.mark.parametrize("method,saved", [
    (["--method", "ptuning", "--encoder", "lstm"], "prompt_encoder.safetensors"),  # MLP: the same code path
    (["--method", "prefix", "--prefix-projection", "true"], "prompt_encoder.safetensors"),
    (["--method", "bitfit"], "bitfit.safetensors"),
], ids=["ptuning-lstm", "prefix-projection", "bitfit"])
def test_resume_from_a_method_checkpoint_matches_uninterrupted_run(tiny_models, tmp_path, method, saved):
    """PEFT's adapter file holds a prompt encoder's output, which cannot be resumed from (prefix projection: a size
    mismatch; P-tuning: loaded into the embedding, silently wrong), so the checkpoint holds the whole encoder;
    BitFit's checkpoint holds its biases, not the whole model (BitFit.save_checkpoint)."""
    import shutil

    args = ["train", "--model", tiny_models["llama"], "--data", SAMPLE, "--max-steps", "4", "--save-steps", "2",
            "--batch-size", "2", "--max-length", "64", "--seed", "3", *method]
    full = tmp_path / "full"
    assert run_cli(*args, "--output-dir", str(full)).returncode == 0
    assert (full / "checkpoint-2" / saved).exists()
    assert not (full / "checkpoint-2" / "model.safetensors").exists()
    cut = tmp_path / "cut"  # the same run stopped after its checkpoint at step 2
    shutil.copytree(full, cut)
    for name in os.listdir(cut):
        if name not in ("checkpoint-2", "config.yaml", "log.jsonl"):
            (shutil.rmtree if (cut / name).is_dir() else os.remove)(cut / name)
    r = run_cli(*args, "--output-dir", str(cut), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout
    final = "bitfit.safetensors" if "bitfit" in method else "adapter_model.safetensors"
    a, b = load_file(str(full / final)), load_file(str(cut / final))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case", ["malformed", "empty", "missing", "not_dataset_dir", "bad_record", "not_a_list"])
def test_bad_data_one_line_error_exit_2_nothing_written(case, tmp_path, tiny_models):
    data = {
        "malformed": lambda: _write(tmp_path / "d.json", '[{"instruction": "x", "output": "y"},'),
        "empty": lambda: _write(tmp_path / "d.json", "  \n"),
        "missing": lambda: str(tmp_path / "nope.json"),
        "not_dataset_dir": lambda: (os.makedirs(tmp_path / "dir"), str(tmp_path / "dir"))[1],
        "bad_record": lambda: _write(tmp_path / "d.jsonl", '{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": ""}\n'),
        "not_a_list": lambda: _write(tmp_path / "d.json", '"hello"'),
    }[case]()
    expected = {
        "malformed": "not valid JSON (line 1, column",
        "empty": "the file is empty",
        "missing": "no such file or directory",
        "not_dataset_dir": "not a dataset saved with `save_to_disk`",
        "bad_record": "record 1: 'output' is empty",
        "not_a_list": "expected a JSON list of records, found str",
    }[case]
    out = tmp_path / "out"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", data, "--output-dir", str(out))
    assert r.returncode == 2
    assert expected in r.stderr and data in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_skip_bad_records_trains_on_the_rest(tmp_path, tiny_models):
    recs = json.load(open(SAMPLE, encoding="utf-8"))[:6] + [{"instruction": "x"}, {"output": 5}]
    data = _write(tmp_path / "d.json", json.dumps(recs, ensure_ascii=False))
    r = run_cli("train", "--model", tiny_models["bloom"], "--data", data, "--method", "bitfit", "--max-steps", "1",
                "--output-dir", str(tmp_path / "o"), "--skip-bad-records", "--max-length", "512")
    assert r.returncode == 0, r.stderr
    assert "skipped 2 bad records" in r.stdout and "data: 6 training examples" in r.stdout


def test_val_data_file_is_what_the_heldout_loss_is_measured_on(tmp_path, tiny_models):
    recs = json.load(open(SAMPLE, encoding="utf-8"))
    data = _write(tmp_path / "train.json", json.dumps(recs[:20], ensure_ascii=False))
    # another format than --data, and a bad record that --skip-bad-records drops from it as from --data
    lines = [json.dumps(r, ensure_ascii=False) for r in recs[100:105]] + ['{"instruction": "x"}']
    val = _write(tmp_path / "val.jsonl", "\n".join(lines) + "\n")
    out = tmp_path / "o"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", data, "--val-data", val, "--skip-bad-records",
                "--max-steps", "2", "--eval-steps", "1", "--batch-size", "2", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert f"skipped 1 bad records of {val}" in r.stdout and " training examples, 5 held out" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["log_history"] if "eval_loss" in e] == [1, 2]  # the Trainer's, on them too
    e = run_cli("eval", "--model", tiny_models["llama"], "--adapter", str(out), "--data", val, "--skip-bad-records",
                "--batch-size", "2", "--json")
    assert e.returncode == 0, e.stderr
    evaluated = json.loads(e.stdout.strip().splitlines()[-1])
    assert evaluated["records"] == 5
    assert metrics["eval_loss"] == pytest.approx(evaluated["loss"], rel=1e-6)
    assert f"-> {evaluated['loss']:.4f} (" in r.stdout.strip().splitlines()[-1]  # held-out loss BASE -> AFTER (DIFF)


def test_val_data_and_val_size_together_are_refused(tmp_path, tiny_models):
    out = tmp_path / "o"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--val-data", SAMPLE, "--val-size", "8",
                "--output-dir", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"--val-data {SAMPLE} and --val-size 8: " in r.stderr and "drop one" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--method", "magic"], "--method 'magic' is unknown"),
    (["--model", "./no/such/model"], "./no/such/model: no such model folder"),
    (["--val-size", "500"], "--val-size 500.0 leaves no training records"),
])
def test_bad_flags(args, expected, tmp_path, tiny_models):
    base = {"--model": tiny_models["llama"], "--data": SAMPLE, "--output-dir": str(tmp_path / "o")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    r = run_cli("train", *[x for kv in base.items() for x in kv])
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_bad_yaml_key(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "model: x\nlearning_rat: 0.1\n")
    r = run_cli("train", "--config", cfg)
    assert r.returncode == 2 and "unknown option 'learning_rat'" in r.stderr and cfg in r.stderr


def test_help_is_fast():
    t = time.time()
    r = run_cli("--help")
    assert r.returncode == 0 and "train" in r.stdout
    assert time.time() - t < 5  # no torch/transformers at import time (a generous bound for a loaded CI box)
