"""The lab's t-tests (lab/stats.py, written without scipy) held against scipy.stats on fixed samples, and the
report's verdicts on comparisons whose verdict must differ: a clear win, a clear loss, noise, one seed."""

import pytest
from scipy import stats

from llm_tuning.lab.aggregate import run_row
from llm_tuning.lab.report import noise_text, quality_columns, quality_rows
from llm_tuning.lab.stats import verdict, welch

TWO_SAMPLES = [
    ([3.91, 3.87, 3.95], [3.70, 3.72, 3.69]),  # three seeds each, far apart
    ([1.0, 1.2, 0.9, 1.1], [1.05, 1.3]),  # unequal sizes
    ([0.5, 3.0, 1.9], [2.0, 2.01, 1.99]),  # unequal spreads: Welch's degrees of freedom near 2
    ([10.0, 10.5], [9.0, 9.2, 9.1, 9.3, 9.25]),
    ([1.0e-3, 2.0e-3, 1.5e-3], [1.4e-3, 1.6e-3, 1.7e-3]),  # p near 1
    ([100.0, 100.1, 99.9], [0.0, 0.1, -0.1]),  # a huge t: p far below 1e-6
    ([2.5, 2.7], [2.4, 2.9]),  # two seeds each
]
ONE_SAMPLE = [([3.91, 3.87, 3.95], 3.915), ([3.70, 3.72, 3.69], 3.915), ([0.2, -0.1, 0.4, 0.05], 0.0),
              ([5.0, 5.2], 4.0), ([1.0, 1.0001, 0.9999], 1.0)]


@pytest.mark.parametrize("a, b", TWO_SAMPLES)
def test_welch_two_sample_p_equals_scipy(a, b):
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch(a, b) == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert welch(b, a) == pytest.approx(expected, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("a, value", ONE_SAMPLE)
def test_against_the_base_is_scipy_s_one_sample_t_test(a, value):
    """The base model is one deterministic value: Welch's test against it is the one-sample t-test."""
    expected = stats.ttest_1samp(a, value).pvalue
    assert welch(a, [value]) == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert welch([value], a) == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_no_spread_no_test():
    assert welch([1.0], [2.0]) is None and welch([], [1.0]) is None
    assert verdict([1.0], [2.0]) == "n/a"


def _point(seed, loss, forget=None):
    return {"status": "ok", "seed": seed, "lr": 1e-3, "heldout_loss": loss, "forget_loss": forget,
            "trainable_params": 10, "total_params": 100}


BASE = {"name": "base", "status": "ok", "heldout_loss": 3.9, "forget_loss": 1.0, "rouge_l": None, "bleu_4": None}
CASES = {  # run name: (held-out losses, losses on the forgetting texts) over three seeds
    "win": ([3.60, 3.62, 3.61], [1.001, 0.999, 1.0005]),  # clearly below the base; forgets nothing to tell
    "loss": ([4.20, 4.21, 4.19], [1.30, 1.32, 1.31]),  # clearly above the base; clearly forgets
    "noise": ([3.50, 4.30, 3.95], [0.80, 1.25, 0.97]),  # the seeds straddle the base
}


def _rows():
    rows = []
    for name, (losses, forgets) in CASES.items():
        finals = [_point(s, l, f) for s, (l, f) in enumerate(zip(losses, forgets))]
        rows.append(run_row({"name": name, "method": "lora"}, [1e-3], None, 1e-3, finals, BASE, None, finals))
    return rows


def test_verdicts_differ_where_the_seeds_say_so():
    assert verdict(CASES["win"][0], [3.9]) == "better" and verdict(CASES["loss"][0], [3.9]) == "worse"
    assert verdict(CASES["noise"][0], [3.9]) == "within noise"
    assert verdict([80.0, 81.0, 80.5], [70.0], lower_is_better=False) == "better"  # a score: higher wins
    rows = {r["name"]: r for r in _rows()}
    for name, word in (("win", "better"), ("loss", "worse"), ("noise", "within noise")):
        p = stats.ttest_1samp(CASES[name][0], 3.9).pvalue
        assert rows[name]["heldout_loss_verdict_vs_base"] == word
        assert rows[name]["heldout_loss_p_vs_base"] == pytest.approx(p, abs=1e-6)
    assert [rows[n]["forgetting_verdict"] for n in CASES] == ["within noise", "worse", "within noise"]


def test_the_report_writes_each_verdict_with_its_p_value():
    rows = _rows()
    header = [c for c, _ in quality_columns(BASE)]
    table = {r[0]: dict(zip(header, r)) for r in quality_rows(BASE, rows)}
    for name, word in (("win", "better"), ("loss", "worse"), ("noise", "within noise")):
        p = stats.ttest_1samp(CASES[name][0], 3.9).pvalue
        assert table[name]["loss vs base"] == f"{word} (p={p:.3g})"
    p = stats.ttest_1samp([f - 1.0 for f in CASES["loss"][1]], 0.0).pvalue
    assert table["loss"]["forgetting vs base"] == f"forgets (p={p:.3g})"
    assert table["win"]["forgetting vs base"].startswith("within noise (p=")
    from llm_tuning.lab.aggregate import noise_summary

    summary = {"seeds": [0, 1, 2], "noise": noise_summary(rows)}
    lines = noise_text(summary, rows)
    held = next(l for l in lines if l.startswith("Held-out loss:"))
    assert held.startswith("Held-out loss: best **win**") and held.endswith("Within noise of the base model: noise.")
    p_noise_vs_win = stats.ttest_ind(CASES["noise"][0], CASES["win"][0], equal_var=False).pvalue
    assert f"within noise of it: noise (p={p_noise_vs_win:.3g})." in held  # loss is told apart from win
