"""`llm-tuning compare` on stories260K: 2 methods x 2 seeds x a 2-point learning-rate sweep (and a broken run).
The report has a base row, mean ± std over the seeds and the difference to the base (an lm-eval task's score
too: harness_tasks); the rate is chosen on the validation records, which are apart from the held-out records the
table reports; valid PNG plots; a failed row
for the broken run without stopping the others; a re-run resumes only what is not done; --force starts afresh."""

import json
import os
import statistics

import pytest
import yaml

from conftest import EN_DATA, STORIES, need_shared, run_cli

PNG = b"\x89PNG\r\n\x1a\n"
RUNS = ("lora-r4", "prefix-proj", "broken")
SEEDS = [0, 1]


HARNESS_KEY = "harness/cmp_bpb/bits_per_byte"  # the lm-eval task the comparison scores (written below)


def harness_task(folder, data_path) -> str:
    """A local lm-eval task: bits per byte of a few English answers (loglikelihood_rolling), no hub."""
    folder.mkdir(parents=True)
    records = json.load(open(data_path))[-6:]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": r["output"][:200]}) + "\n" for r in records))
    (folder / "cmp_bpb.yaml").write_text(
        f"task: cmp_bpb\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
        f"  cache_dir: {folder / 'datasets-cache'}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: bits_per_byte\n'
        "metadata:\n  version: 1.0\n")
    return str(folder)


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    tasks = harness_task(tmp_path_factory.mktemp("harness") / "tasks", need_shared(EN_DATA))
    cfg = {"title": "test", "model": need_shared(STORIES), "data": need_shared(EN_DATA), "output_dir": str(out),
           "harness_tasks": ["cmp_bpb"], "harness_tasks_dir": tasks,
           "max_steps": 4, "batch_size": 4, "max_length": 96, "heldout_size": 10, "val_size": 8, "eval_records": 2,
           "max_new_tokens": 8, "samples": 2, "seeds": SEEDS, "eval_every": 2, "lr_factors": [1, 3],
           "lr_extend": 1,  # a 2-rate sweep's best is always an edge: one rate 3x beyond it is added
           "forget_texts": 6, "forget_tokens": 24,  # forgetting on a few short texts the base samples itself
           "parallel": 2, "threads": 1,  # two runs train at once, one thread each
           "runs": [{"name": "lora-r4", "method": "lora", "lora_r": 4, "lr": [1e-3, 1e-2]},
                    {"name": "prefix-proj", "method": "prefix", "prefix_projection": True, "lr": "auto"},
                    {"name": "broken", "method": "lora", "target_modules": ["no_such_module"], "lr": 1e-3}]}
    path = tmp_path_factory.mktemp("cfg") / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("compare", "--config", str(path))
    assert r.returncode == 0, r.stderr
    return out, path, r


def _rows(out):
    return {n: json.load(open(out / n / "result.json")) for n in RUNS}


def _table(md, first_column):
    """The Markdown table whose header starts with `first_column`, as a list of cell lists (header first)."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_column} |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
    return table


def test_a_sweep_whose_best_is_an_edge_adds_a_rate_beyond_it(compare_run):
    out, _, _ = compare_run
    md = (out / "report.md").read_text()
    for name, first in (("lora-r4", [1e-3, 1e-2]), ("prefix-proj", [3e-2, 9e-2])):
        row = _rows(out)[name]
        grid = row["lr_grid"]
        assert len(grid) == 3 and set(first) < set(grid), grid
        added = (set(grid) - set(first)).pop()
        assert added in (float(f"{max(first) * 3:.3g}"), float(f"{min(first) / 3:.3g}"))
        assert [s["lr"] for s in row["sweep"]] == grid
        assert all((out / name / f"lr{added:.3g}-seed{s}" / "result.json").exists() for s in SEEDS)  # trained
        assert row["bracketed"] == (row["lr"] not in (min(grid), max(grid)))
        lines = [l for l in md.splitlines() if l.startswith(f"| {name} |")]  # its rows in the tables
        marked = [l for l in lines if f"| {row['lr']:.3g} (edge) |" in l]  # the quality and the sweep table
        assert len(marked) == (0 if row["bracketed"] else 2), lines
    assert ("not bracketed" in md) == any(not _rows(out)[n]["bracketed"] for n in ("lora-r4", "prefix-proj"))


def test_base_row_and_mean_std_over_seeds(compare_run):
    out, _, _ = compare_run
    base = json.load(open(out / "base" / "result.json"))
    assert base["status"] == "ok" and all(base[k] is not None for k in ("heldout_loss", "rouge_l", "bleu_4", "val_loss"))
    rows = _rows(out)
    for name in ("lora-r4", "prefix-proj"):
        row = rows[name]
        assert row["status"] == "ok" and row["seeds"] == SEEDS
        for key in ("heldout_loss", "rouge_l", "bleu_4", "tokens_per_s"):
            values = row[key + "_values"]
            assert len(values) == 2 and row[key] == pytest.approx(statistics.mean(values))
            assert row[key + "_std"] == pytest.approx(statistics.stdev(values))
        # two seeds really are two trainings: different held-out losses
        assert row["heldout_loss_values"][0] != row["heldout_loss_values"][1]
        assert row["heldout_loss_vs_base"] == pytest.approx(row["heldout_loss"] - base["heldout_loss"])
    md = (out / "report.md").read_text()
    quality = _table(md, "run")
    header, first = quality[0], quality[1]
    assert first[0] == "base" and first[header.index("held-out loss")] == f"{base['heldout_loss']:.4f}"
    lora = next(r for r in quality if r[0] == "lora-r4")
    cell = lora[header.index("held-out loss")]
    assert cell == f"{rows['lora-r4']['heldout_loss']:.4f} ± {rows['lora-r4']['heldout_loss_std']:.4f}"
    assert lora[header.index("Δ loss vs base")] == f"{rows['lora-r4']['heldout_loss_vs_base']:+.4f}"
    # the verdict against the base: scipy's one-sample t-test of the seeds against the base's value
    from scipy import stats

    for name in ("lora-r4", "prefix-proj"):
        values = rows[name]["heldout_loss_values"]
        p = stats.ttest_1samp(values, base["heldout_loss"]).pvalue
        word = "within noise" if p >= 0.05 else "better" if statistics.mean(values) < base["heldout_loss"] else "worse"
        cells = next(r for r in quality if r[0] == name)
        assert cells[header.index("loss vs base")] == f"{word} (p={rows[name]['heldout_loss_p_vs_base']:.3g})"
        assert rows[name]["heldout_loss_p_vs_base"] == pytest.approx(p, abs=1e-6)
    summary = json.load(open(out / "compare.json"))
    assert summary["base"]["heldout_loss"] == base["heldout_loss"] and len(summary["runs"]) == 3


def test_rate_is_chosen_on_validation_records_apart_from_the_heldout_ones(compare_run):
    from llm_tuning.data.formats import load_records

    out, _, _ = compare_run
    split = json.load(open(out / "data" / "split.json"))
    parts = {k: set(split[k]) for k in ("train", "validation", "heldout")}
    assert len(parts["validation"]) == 8 and len(parts["heldout"]) == 10
    assert not (parts["train"] & parts["validation"]) and not (parts["train"] & parts["heldout"])
    assert not (parts["validation"] & parts["heldout"])
    records = load_records(EN_DATA).records
    training, validation = ([records[i] for i in split[k]] for k in ("train", "validation"))
    heldout = [json.dumps(records[i], sort_keys=True) for i in split["heldout"]]
    rows = _rows(out)
    for name, grid in (("lora-r4", [1e-3, 1e-2]), ("prefix-proj", None)):
        row = rows[name]
        sweep = row["sweep"]
        assert len(sweep) == 3 and (grid is None or set(grid) < {s["lr"] for s in sweep})  # + one past the edge
        for s in sweep:
            for seed, v in zip(s["seeds"], s["val_losses"]):
                point = out / name / f"lr{s['lr']:.3g}-seed{seed}"
                # the validation loss is the training process's own, on exactly the validation records ...
                assert json.load(open(point / "metrics.json"))["eval_loss"] == v
                run_cfg = yaml.safe_load(open(point / "train.yaml"))
                # the comparison evaluates the base once itself: no run does it again
                assert run_cfg["base_eval"] is False and json.load(open(point / "metrics.json"))["base_eval_loss"] is None
                data = load_records(run_cfg["data"]).records
                assert run_cfg["val_size"] == 0 and load_records(run_cfg["val_data"]).records == validation
                assert data == training  # the training records in the split's order, whatever the seed
                # ... and the training process never saw a held-out record
                assert not {json.dumps(r, sort_keys=True) for r in data} & set(heldout)
                history = json.load(open(point / "metrics.json"))["log_history"]
                assert [e["step"] for e in history if "eval_loss" in e] == [2, 4]
            assert s["val_mean"] == pytest.approx(statistics.mean(s["val_losses"]))
        assert row["lr"] == min(sweep, key=lambda s: s["val_mean"])["lr"]
    md = (out / "report.md").read_text()
    assert "| run | method | validation loss per rate | chosen | sweep seeds |" in md
    assert f"| lora-r4 | lora | 0.001: {rows['lora-r4']['sweep'][0]['val_mean']:.4f} ± " in md


def test_table_has_every_column_filled_for_ok_runs(compare_run):
    out, _, r = compare_run
    rows = _rows(out)
    for name in ("lora-r4", "prefix-proj"):
        row = rows[name]
        for key in ("trainable_params", "total_params", "adapter_bytes", "peak_rss_mib", "estimated_mib", "tokens_per_s",
                    "wall_s", "final_train_loss", "heldout_loss", "rouge_l", "bleu_4", "mergeable", "train_tokens",
                    "forgetting", "gen_tokens_per_s", "gen_speed_ratio"):
            assert row.get(key) is not None, (name, key)
        assert row["peak_rss_mib"] > 0 and row["process_peak_rss_mib"] > 100 and row["tokens_per_s"] > 0 and row["adapter_bytes"] > 0
    # same budget: every run trained on exactly the same real tokens
    assert len({rows[n]["train_tokens"] for n in ("lora-r4", "prefix-proj")}) == 1
    assert rows["lora-r4"]["mergeable"] and not rows["prefix-proj"]["mergeable"]
    md = (out / "report.md").read_text()
    cost = _table(md, "run")  # quality first
    headers = [l for l in md.splitlines() if l.startswith("| run |")]
    for col in ("held-out loss", "ROUGE-L", "BLEU-4", "final train loss", "Δ loss vs base", "lr", "seeds"):
        assert col in headers[0]
    assert "cmp_bpb bits_per_byte" in headers[1]  # the benchmarks (lm-eval) after the quality table
    for col in ("answer tokens", "% at the token limit", "% empty", "% repeated trigrams"):
        assert col in headers[2]
    for col in ("trainable params", "trainable %", "adapter size", "training memory MiB (measured)",
                "training memory MiB (estimated)", "train tokens/s", "wall s", "mergeable", "generation tokens/s",
                "generation × base (unmerged)", "generation × base (merged)"):
        assert col in headers[3]
    # quality, benchmarks, answers, cost, sweep
    ok_rows = [l for l in md.splitlines() if l.startswith("| lora-r4 | lora |")]
    assert len(ok_rows) == 5 and all("|  |" not in l for l in ok_rows)  # no empty cell
    assert cost[0][0] == "run" and "## Sample generations" in md and md.count("- *reference*:") == 2
    assert "## Time" in md and "base evaluation" in md and "learning-rate sweep" in md


def test_harness_tasks_are_columns_with_seeds_and_welch_against_the_base(compare_run):
    from llm_tuning.lab.stats import verdict, welch

    out, _, _ = compare_run
    rows, base = _rows(out), json.load(open(out / "base" / "result.json"))
    assert base["harness_tasks"] == ["cmp_bpb"] and base["harness_higher"] == {HARNESS_KEY: False}
    md = (out / "report.md").read_text()
    table = _table(md[md.index("## Benchmarks (lm-eval"):], "run")
    assert table[0] == ["run", "method", "cmp_bpb bits_per_byte ↓", "Δ vs base", "vs base"]
    assert table[1][:4] == ["base", "untouched model", f"{base[HARNESS_KEY]:.4f}", "+0.0000"]
    for name in ("lora-r4", "prefix-proj"):
        row = rows[name]
        points = [json.load(open(out / name / f"lr{row['lr']:.3g}-seed{s}" / "result.json")) for s in SEEDS]
        values = [p[HARNESS_KEY] for p in points]
        for s, v in zip(SEEDS, values):  # each point's figure is its own lm-eval results file's
            saved = json.load(open(out / name / f"lr{row['lr']:.3g}-seed{s}" / "harness_results.json"))
            assert saved["results"]["cmp_bpb"]["bits_per_byte,none"] == v
        assert row[HARNESS_KEY + "_values"] == values and values[0] != values[1] != base[HARNESS_KEY]
        assert row[HARNESS_KEY] == pytest.approx(statistics.mean(values))
        assert row[HARNESS_KEY + "_std"] == pytest.approx(statistics.stdev(values))
        assert row[HARNESS_KEY + "_p_vs_base"] == welch(values, [base[HARNESS_KEY]])
        assert row[HARNESS_KEY + "_verdict_vs_base"] == verdict(values, [base[HARNESS_KEY]], lower_is_better=True)
        cells = next(r for r in table if r[0] == name)
        assert cells[2:4] == [f"{row[HARNESS_KEY]:,.4f} ± {row[HARNESS_KEY + '_std']:,.4f}",
                              f"{row[HARNESS_KEY] - base[HARNESS_KEY]:+.4f}"]
        assert cells[4].startswith(row[HARNESS_KEY + "_verdict_vs_base"])
    assert "| broken | lora |" in md[md.index("## Benchmarks"):]


def test_broken_method_is_a_failed_row_and_the_others_ran(compare_run):
    out, _, r = compare_run
    broken = json.load(open(out / "broken" / "result.json"))
    assert broken["status"] == "failed" and "no_such_module" in broken["error"]
    assert "broken lr 0.001 seed 0: FAILED" in r.stdout and "broken lr 0.001 seed 1: FAILED" in r.stdout
    assert "[14/14] " in r.stdout and "[15/14]" not in r.stdout  # 10 points and 2 x 2 past the sweeps' edges
    assert "| broken | lora | failed:" in (out / "report.md").read_text()
    assert "class='failed'" in (out / "report.html").read_text()


def test_plots_are_valid_pngs_and_html_is_self_contained(compare_run):
    from PIL import Image

    out, _, _ = compare_run
    names = ("loss_curves.png", "heldout_loss_vs_params.png", "scores.png", "lr_sweep.png", "forgetting.png",
             "pareto_heldout_loss.png", "pareto_forgetting.png")
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        with Image.open(out / name) as im:
            assert im.size[0] > 400 and im.size[1] > 150
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(names) and "<table>" in page


def test_rerun_resumes_only_what_is_not_done(compare_run):
    out, path, _ = compare_run
    point = out / "lora-r4" / f"lr{_rows(out)['lora-r4']['lr']:.3g}-seed1"
    first = json.load(open(point / "result.json"))
    os.remove(point / "result.json")
    r = run_cli("compare", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "base: done already" in r.stdout and "lora-r4 lr 0.001 seed 0: done already" in r.stdout
    assert r.stdout.count(": training") == 1 and "lora-r4 (lora): training 1 point(s)" in r.stdout
    assert f"lora-r4 lr {first['lr']:.3g} seed 1: validation loss" in r.stdout
    assert f"prefix-proj lr {_rows(out)['prefix-proj']['lr']:.3g} seed 1: done already" in r.stdout
    again = json.load(open(point / "result.json"))
    assert again["status"] == "ok"
    # its training had finished: nothing is trained again, and the row keeps that training's speed and memory
    assert "nothing left to train" in (point / "train.log").read_text()
    for k in ("tokens_per_s", "peak_rss_mib", "train_tokens", "heldout_loss", "val_loss"):
        assert again[k] == first[k] and again[k], k


def test_force_reruns_from_scratch(compare_run, tmp_path):
    """--force replaces a finished run instead of resuming from its final checkpoint."""
    import shutil

    out, path, r = compare_run
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    cfg = yaml.safe_load(path.read_text())
    cfg.update(output_dir=str(copy), seeds=[0], runs=[{"name": "lora-r4", "method": "lora", "lora_r": 4, "lr": 0.01}])
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(cfg))
    r2 = run_cli("compare", "--config", str(one), "--force")
    assert r2.returncode == 0, r2.stderr
    assert "lora-r4 (lora): training 1 point(s)" in r2.stdout and "base: evaluating" in r2.stdout
    assert "[1/1] lora-r4 lr 0.01 seed 0: validation loss" in r2.stdout
    assert [n for n in os.listdir(copy / "lora-r4") if n.startswith("lr")] == ["lr0.01-seed0"]  # the sweep's are gone
    point = copy / "lora-r4" / "lr0.01-seed0"
    assert json.load(open(point / "metrics.json"))["steps"] == 4
    assert sorted(n for n in os.listdir(point) if n.startswith("checkpoint-")) == ["checkpoint-4"]
    assert "nothing left to train" not in (point / "train.log").read_text()


@pytest.mark.parametrize("text, expected", [
    ("lr: fast\n", "'lr' must be a positive number, a list of them, or auto"),
    ("seeds: [0, zero]\n", "'seeds' must be a list of distinct integers"),
    ("eval_every: soon\n", "'eval_every' has a bad value"),
    ("colour: red\n", "unknown option 'colour'"),
    ("runs: [{name: a, method: lora, lora_rank: 4}]\n", "run 'a': unknown option 'lora_rank'"),
    ("runs: [{name: a, method: lora, seed: 3}]\n", "run 'a': 'seed' is set by compare"),
    ("runs: [{name: a, method: lora, lr: [0.1, -1]}]\n", "run 'a': 'lr' must be a positive number"),
    ("budgets: [1, -4]\n", "'budgets' must be a list of distinct positive numbers"),
    ("batch_size: auto\n", "batch_size auto: every run of a comparison trains the same tokens per step"),
])
def test_bad_compare_yaml_is_refused_naming_the_key(tmp_path, text, expected):
    from llm_tuning.errors import UserError
    from llm_tuning.lab.settings import load_compare_config

    cfg = tmp_path / "c.yaml"
    body = "model: m\ndata: d\noutput_dir: o\nmax_steps: 2\n"
    if not text.startswith("runs:"):
        body += "runs: [{name: a, method: lora}]\n"
    cfg.write_text(body + text)
    with pytest.raises(UserError) as e:
        load_compare_config(str(cfg))
    assert str(e.value).startswith(str(cfg)) and expected in str(e.value)


def test_bad_compare_yaml_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: d\noutput_dir: o\nmax_steps: 2\nruns: [{name: a, method: lora}]\nlr: fast\n")
    r = run_cli("compare", "--config", str(cfg))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{cfg}: 'lr' must be a positive number, a list of them, or auto" in r.stderr


def test_forgetting_per_seed_is_the_loss_on_the_base_s_own_texts_minus_the_base_s(compare_run):
    from scipy import stats

    out, _, _ = compare_run
    texts = json.load(open(out / "data" / "forget.json"))
    assert 0 < len(texts) <= 6 and all(t["text"].strip() for t in texts)
    base = json.load(open(out / "base" / "result.json"))
    md = (out / "report.md").read_text()
    quality = _table(md, "run")
    header = quality[0]
    assert next(r for r in quality if r[0] == "base")[header.index("forgetting")] == "+0.0000"
    for name, row in _rows(out).items():
        if name == "broken":
            assert "forgetting" not in row
            continue
        points = [json.load(open(out / name / f"lr{row['lr']:.3g}-seed{s}" / "result.json")) for s in SEEDS]
        diffs = [p["forget_loss"] - base["forget_loss"] for p in points]
        assert row["forgetting_values"] == pytest.approx(diffs, abs=1e-12)
        assert row["forgetting"] == pytest.approx(statistics.mean(diffs))
        assert row["forgetting_std"] == pytest.approx(statistics.stdev(diffs))
        assert row["forgetting_p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue, abs=1e-6)
        cells = next(r for r in quality if r[0] == name)
        assert cells[header.index("forgetting")] == f"{row['forgetting']:+.4f} ± {row['forgetting_std']:.4f}"
        p = stats.ttest_1samp(diffs, 0.0).pvalue
        word = "within noise" if p >= 0.05 else "forgets" if statistics.mean(diffs) > 0 else "improves"
        assert cells[header.index("forgetting vs base")] == f"{word} (p={row['forgetting_p']:.3g})"
    summary = json.load(open(out / "compare.json"))
    assert "texts of at most 24 tokens that the base model generated itself" in summary["forgetting"]
    assert summary["runs"][0]["forgetting_values"] == _rows(out)[summary["runs"][0]["name"]]["forgetting_values"]
    assert (out / "forgetting.png").read_bytes().startswith(PNG)


def test_eval_on_the_forgetting_texts_gives_the_comparison_s_figure(compare_run):
    out, _, _ = compare_run
    row = _rows(out)["lora-r4"]
    point = out / "lora-r4" / f"lr{row['lr']:.3g}-seed1"
    r = run_cli("eval", "--model", STORIES, "--adapter", str(point), "--data", str(out / "data" / "forget.json"),
                "--max-length", "96", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    base = json.load(open(out / "base" / "result.json"))
    assert got["base_loss"] == pytest.approx(base["forget_loss"], abs=1e-6)
    assert got["loss"] == pytest.approx(json.load(open(point / "result.json"))["forget_loss"], abs=1e-6)
    assert got["forgetting"] == pytest.approx(row["forgetting_values"][1], abs=1e-6)


def test_inference_cost_is_each_seed_s_speed_over_the_base_s_in_the_same_rounds(compare_run):
    """Unmerged for every run, merged for LoRA (mergeable), none merged for prefix tuning (n/a)."""
    out, _, _ = compare_run
    rows = _rows(out)
    base = json.load(open(out / "base" / "result.json"))
    assert base["gen_tokens_per_s"] > 0
    for name, merges in (("lora-r4", True), ("prefix-proj", False)):
        row = rows[name]
        points = [json.load(open(out / name / f"lr{row['lr']:.3g}-seed{s}" / "result.json")) for s in SEEDS]
        for p in points:
            assert p["gen_speed_ratio"] == pytest.approx(p["gen_tokens_per_s"] / p["gen_tokens_per_s_base"])
            assert ("gen_speed_ratio_merged" in p) == merges
        assert row["gen_speed_ratio_values"] == [p["gen_speed_ratio"] for p in points]
    md = (out / "report.md").read_text()
    header = next(l for l in md.splitlines() if "generation × base (merged)" in l)
    cols = [c.strip() for c in header.strip("|").split(" | ")]
    for name in ("lora-r4", "prefix-proj"):
        line = next(l for l in md.splitlines() if l.startswith(f"| {name} |") and "KiB" in l)  # its cost row
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        row = rows[name]
        assert cells[cols.index("generation × base (unmerged)")] == \
            f"{row['gen_speed_ratio']:,.2f} ± {row['gen_speed_ratio_std']:,.2f}"
        merged = cells[cols.index("generation × base (merged)")]
        assert merged == (f"{row['gen_speed_ratio_merged']:,.2f} ± {row['gen_speed_ratio_merged_std']:,.2f}"
                          if name == "lora-r4" else "n/a")
    assert f"(the base alone: {base['gen_tokens_per_s']:,.0f} tokens/s" in md


def test_pareto_fronts_hold_the_runs_no_other_beats_on_both_axes(compare_run):
    out, _, _ = compare_run
    summary = json.load(open(out / "compare.json"))
    ok = [r for r in summary["runs"] if r["status"] == "ok"]
    for quality in ("heldout_loss", "forgetting"):
        for cost, lower in (("peak_rss_mib", True), ("trainable_params", True), ("tokens_per_s", False)):
            def beats(a, b):  # a at least as good on both, better on one
                ax, bx = (a[cost], b[cost]) if lower else (-a[cost], -b[cost])
                return ax <= bx and a[quality] <= b[quality] and (ax < bx or a[quality] < b[quality])
            on_front = {r["name"] for r in ok if not any(beats(o, r) for o in ok if o is not r)}
            assert set(summary["pareto"][quality][cost]) == on_front and on_front, (quality, cost)
    for name in ("pareto_heldout_loss.png", "pareto_forgetting.png"):
        assert (out / name).read_bytes().startswith(PNG)
    md = (out / "report.md").read_text()
    assert "![Held-out loss against training memory" in md and "(pareto_forgetting.png)" in md
