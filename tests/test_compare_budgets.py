"""A comparison at two budgets (`budgets: [1, 3]`): each budget a whole comparison in its own folder, the larger
budget's sweep centred on the rate chosen at the smaller, the base evaluated once, and a report across budgets
whose rank correlation, flipped pairs and table agree with the runs' own results. The answers' table (length,
loops, ends) and Spearman's rho are checked against figures computed here from first principles."""

import json

import pytest
import yaml

from conftest import EN_DATA, STORIES, need_shared

from llm_tuning.lab.budgets import rank_agreement, ranks, spearman
from llm_tuning.evaluate import answer_stats

RUNS = ("lora", "ia3", "bitfit")
GENERAL_TEXT = ("The sun rose over the hills and the farmers went out to the fields.\n\n"
                "A library keeps books, maps and newspapers for anyone who wants to read them.\n\n"
                "Water boils at one hundred degrees at the level of the sea.\n")


@pytest.fixture(scope="module")
def budgets_run(tmp_path_factory):
    from llm_tuning.lab.compare import run_compare

    out = tmp_path_factory.mktemp("budgets") / "report"
    general = tmp_path_factory.mktemp("general") / "general.txt"
    general.write_text(GENERAL_TEXT)
    cfg = {"forget_data": str(general),"title": "budgets", "model": need_shared(STORIES), "data": need_shared(EN_DATA), "output_dir": str(out),
           "max_steps": 2, "budgets": [1, 3], "batch_size": 4, "max_length": 96, "heldout_size": 10, "val_size": 8,
           "eval_records": 3, "max_new_tokens": 12, "samples": 1, "quote_records": False, "seeds": [0, 1],
           "lr": "auto", "lr_factors": [0.5, 2], "lr_extend": 0, "sweep_seeds": 1, "parallel": 2, "threads": 1,
           "runs": [{"name": "lora", "method": "lora"}, {"name": "ia3", "method": "ia3", "lr": 0.01},
                    {"name": "bitfit", "method": "bitfit", "lr": 0.01}]}
    path = tmp_path_factory.mktemp("cfg") / "budgets.yaml"
    path.write_text(yaml.safe_dump(cfg))
    said = []
    result = run_compare(str(path), log=said.append)
    return out, result, said


def _results(out, budget):
    return {n: json.load(open(out / f"budget-{budget}x" / n / "result.json")) for n in RUNS}


def test_each_budget_is_a_whole_comparison_with_its_steps(budgets_run):
    out, _, said = budgets_run
    for b, steps in ((1, 2), (3, 6)):
        summary = json.load(open(out / f"budget-{b}x" / "compare.json"))
        assert summary["steps"] == steps and summary["budget"] == b
        assert (out / f"budget-{b}x" / "report.md").exists()
        for name, row in _results(out, b).items():
            assert row["status"] == "ok" and row["seeds"] == [0, 1], (b, name, row.get("error"))
    # the base is evaluated once, at the first budget, and reused
    assert sum("base: evaluating" in line for line in said) == 1
    first, second = (json.load(open(out / f"budget-{b}x" / "base" / "result.json")) for b in (1, 3))
    assert first["heldout_loss"] == second["heldout_loss"]


def test_the_larger_budget_sweeps_around_the_rate_chosen_at_the_smaller(budgets_run):
    out, _, _ = budgets_run
    chosen = _results(out, 1)["lora"]["lr"]
    assert _results(out, 1)["lora"]["lr_grid"] == sorted(float(f"{1e-3 * f:.3g}") for f in (0.5, 2))
    assert _results(out, 3)["lora"]["lr_grid"] == sorted(float(f"{chosen * f:.3g}") for f in (0.5, 2))
    assert _results(out, 3)["ia3"]["lr_grid"] == [0.01]  # a fixed rate stays fixed


def test_report_across_budgets_agrees_with_the_runs(budgets_run):
    out, _, _ = budgets_run
    one, three = _results(out, 1), _results(out, 3)
    summary = json.load(open(out / "compare.json"))
    agree = summary["rank_agreement"][0]
    assert (agree["first"], agree["second"]) == (1, 3)
    # rho from first principles: rank the seed means at each budget (no ties here), Pearson on the ranks
    r1 = {n: i for i, n in enumerate(sorted(RUNS, key=lambda n: one[n]["heldout_loss"]))}
    r3 = {n: i for i, n in enumerate(sorted(RUNS, key=lambda n: three[n]["heldout_loss"]))}
    d2 = sum((r1[n] - r3[n]) ** 2 for n in RUNS)
    assert agree["rho"] == pytest.approx(1 - 6 * d2 / (3 * (9 - 1)))
    flipped = {tuple(sorted(f["runs"])) for f in agree["flipped"]}
    assert flipped == {tuple(sorted((a, b))) for a in RUNS for b in RUNS if a < b and (r1[a] - r1[b]) * (r3[a] - r3[b]) < 0}
    md = (out / "report.md").read_text()
    assert f"**{agree['rho']:.2f}**" in md and "Does the order hold at 3x the budget of 1x?" in md
    row = next(l for l in md.splitlines() if l.startswith("| lora |"))
    assert f"{one['lora']['heldout_loss']:.4f}" in row and f"{three['lora']['heldout_loss']:.4f}" in row
    assert row.rstrip(" |").endswith(str(r3["lora"] + 1))  # its rank at 3x
    assert next(l for l in md.splitlines() if l.startswith("| base |")).count("+0.0000") == 4  # Δ, forgetting
    header = next(l for l in md.splitlines() if l.startswith("| run | method |")).split(" | ")
    cells = row.split(" | ")
    for b, rows in ((1, one), (3, three)):
        f = rows["lora"]
        assert cells[header.index(f"forgetting {b}x")] == f"{f['forgetting']:+.4f} ± {f['forgetting_std']:.4f}"
    assert "[budget-3x/report.md](budget-3x/report.md)" in md
    assert '<a href="budget-3x/report.html">' in (out / "report.html").read_text()
    assert (out / "heldout_loss_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_answers_table_and_samples_without_quoting_the_records(budgets_run):
    out, _, _ = budgets_run
    md = (out / "budget-3x" / "report.md").read_text()
    lora = _results(out, 3)["lora"]
    row = next(l for l in md.splitlines() if l.startswith("| lora |") and "at the token limit" not in l
               and f"{lora['answer_tokens']:.1f}" in l)
    assert 0 <= lora["answer_tokens"] <= 12 and 0 <= lora["answers_at_limit"] <= 100, row
    assert "held-out record 1 (not quoted" in md and "*reference*" not in md
    assert "ROUGE-L's rank correlation with the held-out loss" in md


def test_ranks_and_spearman():
    assert ranks([3.0, 1.0, 2.0, 1.0]) == [4.0, 1.5, 3.0, 1.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_flip_is_beyond_noise_only_when_both_budgets_tell_the_pair_apart():
    def row(name, values):
        return {"name": name, "status": "ok", "heldout_loss": sum(values) / len(values), "heldout_loss_values": values}

    first = [row("a", [1.00, 1.01, 0.99]), row("b", [2.00, 2.01, 1.99]), row("c", [3.0, 3.5, 2.5])]
    second = [row("a", [2.50, 2.51, 2.49]), row("b", [1.50, 1.51, 1.49]), row("c", [3.1, 3.6, 2.6])]
    agree = rank_agreement(first, second)
    assert agree["rho"] == pytest.approx(0.5) and agree["best"] == ["a", "b"]
    assert [(f["runs"], f["beyond_noise"]) for f in agree["flipped"]] == [(["a", "b"], True)]
    noisy = [row("a", [0.5, 3.0, 1.9]), row("b", [2.0, 2.01, 1.99]), row("c", [3.0, 3.5, 2.5])]
    assert [f["beyond_noise"] for f in rank_agreement(noisy, second)["flipped"]] == [False]


def test_answer_stats_count_tokens_ends_and_loops():
    eos = 2
    ids = [[5, 6, 7, eos], [5, 6, 5, 6, 5, 6], [eos], [8, 9, 10, 11, 12, 13]]
    texts = ["a b c", "x y x y x y", "", "p q r s t u"]
    stats = answer_stats(ids, texts, eos, max_new_tokens=6)
    assert stats["answer_tokens"] == pytest.approx((3 + 6 + 0 + 6) / 4)
    assert stats["answers_at_limit"] == pytest.approx(50.0)  # the two of 6 tokens without eos
    assert stats["answers_empty"] == pytest.approx(25.0)
    # [5,6,5,6,5,6]: trigrams 565, 656, 565, 656 -> 2 of 4 repeat; the others repeat none
    assert stats["repeated_trigrams"] == pytest.approx(100 * 0.5 / 4)


def test_forgetting_on_a_text_file_the_user_names(budgets_run):
    """forget_data: the loss over every token of its paragraphs, the base's measured once for both budgets; no
    sample of the base's own is drawn and no copy of the file is written."""
    from llm_tuning.evaluate import text_loss
    from llm_tuning.infer import load_for_inference

    out, _, said = budgets_run
    base = json.load(open(out / "budget-1x" / "base" / "result.json"))
    model, tok, _ = load_for_inference(STORIES)
    texts = GENERAL_TEXT.strip().split("\n\n")
    assert base["forget_loss"] == pytest.approx(text_loss(model, tok, texts, max_length=96)["loss"], abs=1e-6)
    assert not any("sampling" in line for line in said)
    for b in (1, 3):
        assert not (out / f"budget-{b}x" / "data" / "forget.json").exists()
        summary = json.load(open(out / f"budget-{b}x" / "compare.json"))
        assert summary["forgetting"].startswith("the 3 texts of `") and summary["forgetting"].endswith("general.txt`")
        for name, row in _results(out, b).items():
            assert len(row["forgetting_values"]) == 2 and row["forgetting"] is not None, name
