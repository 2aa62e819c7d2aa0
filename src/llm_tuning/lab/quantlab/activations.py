"""Activations and outliers: every linear layer's input on real records, and the product's quantisation error.

The inputs X of each torch.nn.Linear (a forward pre-hook, one record at a time, so no padding enters) are
gathered over the records; Y = X W^T in fp32 is the reference. The product schemes:

- int8_tensor:      X and W each with one absmax scale (the whole matrix).
- int8_vectorwise:  LLM.int8's vector-wise quantisation without decomposition: one scale per row of X (token)
                    and one per column of W^T (output feature), through bitsandbytes' int8_vectorwise_quant and
                    int8_scaled_mm, the kernels Linear8bitLt runs.
- llm_int8@T:       bitsandbytes' mixed-precision decomposition at threshold T (its int8_mixed_scaled_mm, which
                    its CPU backend exposes): the feature dimensions where any |x| >= T are taken out of the int8
                    product and multiplied in floating point (X's own values against W's columns dequantised from
                    int8, as Linear8bitLt does with an int8-stored weight); the rest goes through vector-wise int8.
                    T = 0 means no decomposition (bitsandbytes' convention), so llm_int8@0 == int8_vectorwise.

The products run in fp32 (Linear8bitLt casts its input to fp16 first; that rounding belongs to the end-to-end
losses, not here). A model as small as stories260K may have no |x| above 6; `demo_inputs` scales a few feature
dimensions to imitate the emergent outlier features of large models (a demonstration, labelled as such).
"""

from __future__ import annotations


def threshold_key(t: float) -> str:
    return f"{t:g}"


def collect_inputs(model, tokenizer, records, template, max_length, max_rows) -> dict:
    """{linear layer name: float32 tensor [rows, in_features]}: its inputs over the records' tokens (prompt and
    response, one record per forward pass), at most `max_rows` rows per layer."""
    import torch

    from ...data.tokenize import encode_records
    from .weights import linear_layers

    enc = encode_records(tokenizer, records, template, max_length)
    seen: dict = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            have = sum(len(a) for a in seen.setdefault(name, []))
            if have < max_rows:
                seen[name].append(x[: max_rows - have].clone())
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linear_layers(model)]
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            for ids in enc.input_ids:
                model(input_ids=torch.tensor([ids], device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(xs) for n, xs in seen.items()}


def demo_inputs(X, k: int, scale: float, seed: int = 0):
    """DEMONSTRATION ONLY: X with `k` feature dimensions (the same ones for every layer of this width, chosen by
    `seed`) multiplied by `scale`, as the emergent outlier features of large models are."""
    import torch

    if k <= 0:
        return X
    g = torch.Generator().manual_seed(seed + X.shape[1])
    dims = torch.randperm(X.shape[1], generator=g)[:k]
    X = X.clone()
    X[:, dims] *= scale
    return X


def outliers(X, thresholds) -> dict:
    """{threshold key: {'dims': feature dimensions with some |x| >= T, 'rows': rows with some |x| >= T}};
    T = 0 decomposes nothing, so it counts 0."""
    out = {}
    for t in thresholds:
        if t <= 0:
            out[threshold_key(t)] = {"dims": 0, "rows": 0}
            continue
        big = X.abs() >= t
        out[threshold_key(t)] = {"dims": int(big.any(dim=0).sum()), "rows": int(big.any(dim=1).sum())}
    return out


def _rel(Y, ref) -> float:
    n = float(ref.norm())
    return float((Y - ref).norm()) / n if n else 0.0


def product_errors(X, W, thresholds) -> dict:
    """{'int8_tensor', 'int8_vectorwise', 'llm_int8@T' for each T: ||XW^T - Y_q||_F / ||XW^T||_F}."""
    import torch

    from .weights import _bnb, dequantized

    F = _bnb()
    X, W = X.float().contiguous(), W.detach().float().contiguous()
    ref = X @ W.t()
    # Per tensor: dequantise both and multiply; equal to the int32 product times the two scales up to fp32
    # rounding of the sum (bitsandbytes has no per-tensor int8 matmul).
    out = {"int8_tensor": _rel(dequantized(X, "int8_tensor") @ dequantized(W, "int8_tensor").t(), ref)}
    CB, SCB, _ = F.int8_vectorwise_quant(W.clone())
    CA, SCA, _ = F.int8_vectorwise_quant(X.clone())
    out["int8_vectorwise"] = _rel(torch.ops.bitsandbytes.int8_scaled_mm.default(CA, CB, SCA, SCB,
                                                                                 dtype=torch.float32), ref)
    for t in thresholds:
        if t <= 0:
            out[f"llm_int8@{threshold_key(t)}"] = out["int8_vectorwise"]
            continue
        CA, SCA, cols = F.int8_vectorwise_quant(X.clone(), threshold=float(t))
        Y, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(X, CA, CB, SCA, SCB, cols, None)
        out[f"llm_int8@{threshold_key(t)}"] = _rel(Y.float(), ref)
    return out


def activation_report(model, inputs: dict, thresholds, demo_k: int = 0, demo_scale: float = 1.0) -> dict:
    """{layer: {'max_abs', 'outliers', 'product'}} on the real inputs, and with demo_k > 0 the same on the
    demonstration inputs under 'demo'."""
    from .weights import linear_layers

    modules = dict(linear_layers(model))
    out = {}
    for name, X in inputs.items():
        W = modules[name].weight
        out[name] = {"max_abs": float(X.abs().max()), "outliers": outliers(X, thresholds),
                     "product": product_errors(X, W, thresholds)}
        if demo_k > 0:
            Xd = demo_inputs(X, demo_k, demo_scale)
            out[name]["demo"] = {"max_abs": float(Xd.abs().max()), "outliers": outliers(Xd, thresholds),
                                 "product": product_errors(Xd, W, thresholds)}
    return out
