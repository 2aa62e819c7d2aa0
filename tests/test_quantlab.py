"""The quantisation lab: each scheme's error on hand-checkable matrices, its laws on a real model, the CLI."""

import json
import math
import os

import pytest
import torch

from conftest import EN_DATA, STORIES, need_shared, run_cli
from llm_tuning.lab.quantlab.activations import demo_inputs, outliers, product_errors
from llm_tuning.lab.quantlab.weights import WEIGHT_SCHEMES, dequantized, weight_error

# 2 x 4, chosen so that no value rounds from exactly .5
W = torch.tensor([[1.27, -0.6, 0.123, 0.456], [0.01, -1.0, 0.333, 0.0]])


def _rel(dq):
    return float((W - torch.tensor(dq)).norm() / W.norm())


def test_int8_per_tensor_by_hand():
    # absmax 1.27 for the whole matrix: q = round(127 / 1.27 * w) = round(100 w), w' = q / 100
    dq = [[1.27, -0.60, 0.12, 0.46], [0.01, -1.00, 0.33, 0.0]]
    err = weight_error(W, "int8_tensor")
    assert err["rel"] == pytest.approx(math.sqrt(0.003 ** 2 + 0.004 ** 2 + 0.003 ** 2) / float(W.norm()), rel=1e-4)
    assert err["rel"] == pytest.approx(_rel(dq), rel=1e-4)
    assert err["max_abs"] == pytest.approx(0.004, abs=1e-6)


def test_int8_per_row_and_per_column_by_hand():
    # rows: absmax 1.27 (q = round(100 w)) and 1.0 (q = round(127 w): 1.27 -> 1, 42.291 -> 42)
    rows = [[1.27, -0.60, 0.12, 0.46], [1 / 127, -1.0, 42 / 127, 0.0]]
    assert weight_error(W, "int8_row")["rel"] == pytest.approx(_rel(rows), rel=1e-4)
    # columns: absmax 1.27 | 1.0 (-76.2 -> -76) | 0.333 (127 * 0.123 / 0.333 = 46.9 -> 47) | 0.456
    cols = [[1.27, -76 / 127, 47 * 0.333 / 127, 0.456], [0.01, -1.0, 0.333, 0.0]]
    assert weight_error(W, "int8_col")["rel"] == pytest.approx(_rel(cols), rel=1e-4)
    # More scales shrink the rounding step, not every rounding error: on this matrix row 2's finer grid (1/127
    # against 1/100) happens to land farther from 0.01 and 0.333, so per row is slightly worse than per tensor.
    # The law holds on real weight matrices (test_per_row_error_is_at_most_per_tensor_on_every_layer).
    assert weight_error(W, "int8_row")["rel"] > weight_error(W, "int8_tensor")["rel"]


NF4 = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379, 0.4407,
       0.5626, 0.7230, 1.0]  # the NF4 code (QLoRA, appendix E)
FP4 = sorted({s * v for s in (1, -1) for v in (0.0, 0.0052083, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0)})


def _blockwise_reference(x, code, block):
    """Plain torch: per block of `block` values, the nearest code value to x / absmax, times absmax."""
    flat = x.reshape(-1, block)
    absmax = flat.abs().max(dim=1, keepdim=True).values
    code = torch.tensor(code)
    idx = (flat / absmax).unsqueeze(-1).sub(code).abs().argmin(dim=-1)
    return (code[idx] * absmax).reshape(x.shape)


def test_nf4_by_hand_and_against_a_reference():
    x = torch.zeros(1, 64)
    x[0, :3] = torch.tensor([2.0, 1.0, -0.5])  # absmax 2: 1.0 -> 0.5 -> nearest 0.4407; -0.5 -> -0.25 -> -0.2844
    dq = dequantized(x, "nf4")
    assert dq[0, :3].tolist() == pytest.approx([2.0, 2 * 0.4407, 2 * -0.2844], abs=2e-4)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 128, generator=g)
    assert dequantized(w, "nf4") == pytest.approx(_blockwise_reference(w, NF4, 64), abs=2e-4 * 4)
    assert dequantized(w, "fp4") == pytest.approx(_blockwise_reference(w, FP4, 64), abs=1e-5 * 4)


def test_int8_blockwise_against_a_reference():
    from bitsandbytes.functional import create_dynamic_map

    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 128, generator=g)
    got, ref = dequantized(w, "int8_block"), _blockwise_reference(w, create_dynamic_map().tolist(), 64)
    # bitsandbytes' CPU kernel picks the nearest code value up to float rounding: at a near tie (here one value of
    # 512, 5e-6 of the block's absmax from the midpoint of two codes) it may take the other neighbour.
    differ = (got - ref).abs() > 1e-6
    assert int(differ.sum()) <= 2
    assert ((w - got).abs() - (w - ref).abs()).abs().max() < 1e-4 * float(w.abs().max())
    assert float((w - got).norm()) == pytest.approx(float((w - ref).norm()), rel=1e-3)


def _llm_int8_reference(X, Wt, t):
    """LLM.int8 in plain torch (bitsandbytes' formulation): elements with |x| >= t are left out of X's row scales,
    their columns go through floating point against W dequantised from int8, the rest through int8."""
    big = X.abs() >= t
    cols = big.any(dim=0)
    Xz = X.masked_fill(big, 0)
    sx = Xz.abs().amax(dim=1, keepdim=True)
    qx = torch.round(Xz * 127 / sx)
    qx[:, cols] = 0
    sw = Wt.abs().amax(dim=1, keepdim=True)
    qw = torch.round(Wt * 127 / sw)
    Y = (qx @ qw.t()) * (sx * sw.t()) / 127 ** 2
    return Y + X[:, cols] @ (qw[:, cols] * sw / 127).t()


def test_llm_int8_matches_a_plain_torch_reference_and_beats_vectorwise_on_outliers():
    g = torch.Generator().manual_seed(2)
    X, Wt = torch.randn(32, 48, generator=g), torch.randn(16, 48, generator=g) * 0.1
    X[:, 5] *= 25  # one outlier feature dimension
    ref = X @ Wt.t()
    err = product_errors(X, Wt, [0, 6])
    expected = float((_llm_int8_reference(X, Wt, 6.0) - ref).norm() / ref.norm())
    assert err["llm_int8@6"] == pytest.approx(expected, rel=1e-3)
    assert err["llm_int8@0"] == err["int8_vectorwise"]
    assert err["llm_int8@6"] < err["int8_vectorwise"] / 2
    rows = int((X[:, 5].abs() >= 6).sum())
    assert 0 < rows < 32
    assert outliers(X, [0, 6]) == {"0": {"dims": 0, "rows": 0}, "6": {"dims": 1, "rows": rows}}


@pytest.fixture(scope="module")
def stories():
    need_shared(STORIES)
    need_shared(EN_DATA)
    from llm_tuning.data.formats import load_records
    from llm_tuning.data.tokenize import prepare_tokenizer
    from llm_tuning.lab.quantlab.activations import collect_inputs
    from llm_tuning.models.load import load_model, load_tokenizer

    model = load_model(STORIES)
    tok = prepare_tokenizer(load_tokenizer(STORIES), log=lambda m: None)
    inputs = collect_inputs(model, tok, load_records(EN_DATA).records[:3], "default", max_length=96, max_rows=192)
    return model, inputs


def test_per_row_error_is_at_most_per_tensor_on_every_layer(stories):
    from llm_tuning.lab.quantlab.weights import weight_errors

    errors = weight_errors(stories[0])
    assert len(errors) == 36 + 1  # 5 decoder layers x 7 linear layers, lm_head, and all layers together
    for name, e in errors.items():
        assert set(e) == set(WEIGHT_SCHEMES)
        assert e["int8_row"]["rel"] <= e["int8_tensor"]["rel"], name
        assert e["int8_tensor"]["rel"] < e["nf4"]["rel"], name


def test_with_demonstration_outliers_llm_int8_beats_vectorwise_int8(stories):
    from llm_tuning.lab.quantlab.weights import linear_layers

    model, inputs = stories
    layers = dict(linear_layers(model))
    real_vw, demo_vw = [], []
    for name, X in inputs.items():
        real = product_errors(X, layers[name].weight, [0, 6])
        demo = product_errors(demo_inputs(X, 2, 20.0), layers[name].weight, [0, 6])
        real_vw.append(real["int8_vectorwise"])
        demo_vw.append(demo["int8_vectorwise"])
        assert demo["llm_int8@6"] < demo["int8_vectorwise"], name  # the decomposition brings the error back down
    # the outliers blow the vector-wise error up: on average (a layer whose product the scaled dimensions come to
    # dominate can see its relative error fall: layer 0's down_proj on 64 records, examples/quantlab_stories260k)
    assert sum(demo_vw) > 1.5 * sum(real_vw)


def test_cli_end_to_end_writes_the_report_and_the_json(tmp_path):
    need_shared(STORIES)
    need_shared(EN_DATA)
    out = tmp_path / "lab"
    r = run_cli("quantlab", "--model", STORIES, "--data", EN_DATA, "--records", "2", "--max-rows", "64",
                "--max-length", "64", "--thresholds", "0,6", "--demo-outliers", "2", "--json", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"layers", "loss", "demo"}
    assert set(doc["loss"]) == {"fp32", "llm_int8@0", "llm_int8@6", "nf4", "fp4"}
    assert all(math.isfinite(v) for v in doc["loss"].values())
    assert len(doc["layers"]) == 36
    for layer in doc["layers"]:
        assert set(layer) == {"name", "weight", "outlier_dims", "product"}
        assert set(layer["weight"]) == set(WEIGHT_SCHEMES)
        assert set(layer["outlier_dims"]) == {"0", "6"}
        assert set(layer["product"]) == {"int8_tensor", "int8_vectorwise", "llm_int8@0", "llm_int8@6"}
    assert json.loads((out / "quantlab.json").read_text()) == doc
    for name in ("report.md", "report.html", "weight_error_per_layer.png", "product_error_vs_threshold.png",
                 "outlier_dims_per_layer.png"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and 'src="http' not in html
    assert "DEMONSTRATION" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, expected", [
    (["--model", "no/such/model-dir", "--data", "x.json"], "no/such/model-dir: no such model folder"),
    (["--model", ".", "--data", "x.json", "--thresholds", "0,six"], "--thresholds: 'six' is not a number"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    r = run_cli("quantlab", *args, "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and expected in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "o")


def test_a_zero_lora_update_merged_then_quantised_equals_the_quantised_base(tmp_path):
    """PEFT starts LoRA's B at zero: merging it changes no weight, so both routes must give the quantised base's
    own loss, exactly."""
    need_shared(STORIES)
    need_shared(EN_DATA)
    from peft import LoraConfig, get_peft_model

    from llm_tuning.data.formats import load_records
    from llm_tuning.data.tokenize import prepare_tokenizer
    from llm_tuning.lab.quantlab.endtoend import ADAPTER_SCHEMES, _loss, adapter_losses, load_scheme
    from llm_tuning.models.load import load_model, load_tokenizer

    get_peft_model(load_model(STORIES), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(
        str(tmp_path / "lora"))
    tok = prepare_tokenizer(load_tokenizer(STORIES), log=lambda m: None)
    records = load_records(EN_DATA).records[:2]
    got = adapter_losses(STORIES, str(tmp_path / "lora"), tok, records, "default", 64, log=lambda m: None)
    assert set(got) == {"adapter"} | {f"{w}_{q}" for q in ADAPTER_SCHEMES for w in ("merged_then", "adapter_on")}
    assert got["adapter"]["loss"] == _loss(load_model(STORIES), tok, records, "default", 64)["loss"]
    for q in ADAPTER_SCHEMES:
        base = _loss(load_scheme(STORIES, q), tok, records, "default", 64)["loss"]
        assert got[f"merged_then_{q}"]["loss"] == base, q
        assert got[f"adapter_on_{q}"]["loss"] == base, q
