"""Generation metrics against values worked out by hand from n-gram counts.

rouge_chinese computes F1 as 2PR / (P + R + 1e-8), so exact fractions are
compared with an absolute tolerance well above that epsilon.
"""

import math

import pytest

from llm_tuning.evaluate.text_metrics import bleu4, bleu_units, rouge, score, segment

TOL = 1e-4  # on the 0..100 scale


def f1(p, r):
    return 100 * 2 * p * r / (p + r)


def all_four(pred, ref):
    out = rouge(pred, ref)
    out["bleu-4"] = bleu4(pred, ref)
    return out


@pytest.mark.parametrize("text", ["我爱北京天安门，也爱长城。", "The quick brown fox jumps over the lazy dog."])
def test_identical_texts_score_100(text):
    for name, value in all_four(text, text).items():
        assert value == pytest.approx(100.0, abs=TOL), name


def test_english_segmentation_lowercases_and_splits_punctuation():
    assert segment("The cat, sat!") == ["the", "cat", ",", "sat", "!"]
    assert bleu_units("The cat, sat!") == ["the", "cat", ",", "sat", "!"]


def test_english_rouge_by_hand():
    # hyp: the cat sat        ref: the cat sat down
    # unigrams: 3 of 3 hyp match, 3 of 4 ref covered -> P=1, R=3/4, F1=6/7
    # bigrams: {the cat, cat sat} vs {the cat, cat sat, sat down} -> P=1, R=2/3, F1=4/5
    # LCS = "the cat sat" (3) -> P=3/3, R=3/4, F1=6/7
    r = rouge("the cat sat", "the cat sat down")
    assert r["rouge-1"] == pytest.approx(600 / 7, abs=TOL)
    assert r["rouge-1"] == pytest.approx(f1(1, 3 / 4), abs=TOL)
    assert r["rouge-2"] == pytest.approx(80.0, abs=TOL)
    assert r["rouge-l"] == pytest.approx(600 / 7, abs=TOL)


def test_english_rouge_l_differs_from_rouge_1_when_order_changes():
    # hyp: sat the cat        ref: the cat sat down
    # unigrams all match: P=1, R=3/4; bigrams {sat the, cat} vs ref: only "the cat" -> P=1/2, R=1/3
    # LCS = "the cat" (2) -> P=2/3, R=2/4
    r = rouge("sat the cat", "the cat sat down")
    assert r["rouge-1"] == pytest.approx(f1(1, 3 / 4), abs=TOL)
    assert r["rouge-2"] == pytest.approx(f1(1 / 2, 1 / 3), abs=TOL)  # 40.0
    assert r["rouge-l"] == pytest.approx(f1(2 / 3, 2 / 4), abs=TOL)  # 400/7


def test_english_bleu_short_hypothesis_uses_method3_and_brevity_penalty():
    # hyp (3 words) vs ref (4 words): precisions 3/3, 2/2, 1/1; no 4-gram in the hypothesis,
    # so nltk counts 0/1 and method3 turns the first zero into 1/(2**1 * 1) = 1/2.
    # Brevity penalty exp(1 - 4/3).
    expected = 100 * (1 * 1 * 1 * 0.5) ** 0.25 * math.exp(1 - 4 / 3)
    assert bleu4("the cat sat", "the cat sat down") == pytest.approx(expected, abs=TOL)


def test_chinese_segmentation_is_jieba_words():
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert segment("北京天安门") == ["北京", "天安门"]


def test_chinese_rouge_counts_words_not_characters():
    # hyp words [北京, 天安门], ref words [我, 爱, 北京, 天安门]
    # ROUGE-1: P=2/2, R=2/4 -> F1=2/3 (character level would have given 5/5, 5/7 -> 5/6)
    # ROUGE-2: hyp {北京 天安门} vs ref {我 爱, 爱 北京, 北京 天安门} -> P=1, R=1/3 -> F1=1/2
    # ROUGE-L: LCS = 北京 天安门 (2) -> P=1, R=1/2 -> F1=2/3
    r = rouge("北京天安门", "我爱北京天安门")
    assert r["rouge-1"] == pytest.approx(200 / 3, abs=TOL)
    assert r["rouge-2"] == pytest.approx(50.0, abs=TOL)
    assert r["rouge-l"] == pytest.approx(200 / 3, abs=TOL)


def test_chinese_bleu_units_are_characters():
    assert bleu_units("你好，世界") == ["你", "好", "，", "世", "界"]
    assert bleu_units("你好 世界") == ["你", "好", "世", "界"]


def test_chinese_bleu_one_character_changed_no_zero_counts():
    # ref 我爱北京天安门, hyp 我爱南京天安门 (北 -> 南), 7 characters each so BP = 1.
    # 1-grams: 6/7 (南 misses)
    # 2-grams: 我爱 ✓ 爱南 ✗ 南京 ✗ 京天 ✓ 天安 ✓ 安门 ✓ -> 4/6
    # 3-grams: 我爱南 ✗ 爱南京 ✗ 南京天 ✗ 京天安 ✓ 天安门 ✓ -> 2/5
    # 4-grams: 我爱南京 ✗ 爱南京天 ✗ 南京天安 ✗ 京天安门 ✓ -> 1/4
    # No zero counts, so smoothing leaves the geometric mean alone: (2/35) ** (1/4).
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert expected == pytest.approx(100 * (2 / 35) ** 0.25)
    assert bleu4("我爱南京天安门", "我爱北京天安门") == pytest.approx(expected, abs=TOL)


def test_chinese_bleu_one_character_changed_method3():
    # ref 我爱北京天安门, hyp 我爱北海天安门 (京 -> 海), BP = 1.
    # 1-grams 6/7; 2-grams 我爱 爱北 天安 安门 -> 4/6; 3-grams 我爱北 天安门 -> 2/5;
    # 4-grams: every one contains 海 -> 0/4, method3 replaces it with 1/(2**1 * 4) = 1/8.
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 8) ** 0.25  # = 100 * (1/35) ** (1/4)
    assert bleu4("我爱北海天安门", "我爱北京天安门") == pytest.approx(expected, abs=TOL)


def test_disjoint_texts_score_zero():
    for pred, ref in [("apples and oranges", "purple rain falls"), ("今天天气很好", "我们去吃饭吧")]:
        r = all_four(pred, ref)
        assert r["rouge-1"] == r["rouge-2"] == r["rouge-l"] == 0.0
        assert r["bleu-4"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("pred, ref", [("", "我爱北京天安门"), ("   ", "the cat sat"), ("the cat", ""), ("", "")])
def test_empty_side_gives_zeros_without_raising(pred, ref):
    assert all_four(pred, ref) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_score_averages_pairs():
    # Pair 1 identical -> 100 everywhere; pair 2 is the hand-checked English pair above.
    s = score(["the quick brown fox", "the cat sat"], ["the quick brown fox", "the cat sat down"])
    bleu2 = 100 * 0.5 ** 0.25 * math.exp(1 - 4 / 3)
    assert s["records"] == 2
    assert s["rouge-1"] == pytest.approx((100 + 600 / 7) / 2, abs=TOL)
    assert s["rouge-2"] == pytest.approx((100 + 80) / 2, abs=TOL)
    assert s["rouge-l"] == pytest.approx((100 + 600 / 7) / 2, abs=TOL)
    assert s["bleu-4"] == pytest.approx((100 + bleu2) / 2, abs=TOL)


def test_score_length_mismatch_raises():
    with pytest.raises(ValueError):
        score(["a", "b"], ["a"])


def test_importing_metrics_does_not_load_heavy_packages():
    import subprocess
    import sys

    code = ("import sys, llm_tuning.evaluate; "
            "print(sorted(m for m in ('jieba', 'rouge_chinese', 'nltk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
