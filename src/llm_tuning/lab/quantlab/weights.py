"""Weight quantisation errors: each scheme's round trip W -> quant -> dequant, through bitsandbytes' own functions.

A scheme maps a 2-D float weight [out_features, in_features] to its dequantised copy, the matrix the product
really uses. Its error is ||W - dequant(quant(W))||_F / ||W||_F (relative) and max |W - dequant(quant(W))|.

- int8_tensor: one absmax scale for the whole matrix, q = round(127 * w / absmax(W)). bitsandbytes has no
  per-tensor int8 function, but its vector-wise one over the matrix laid out as a single row is exactly that.
- int8_row:    one scale per row (output feature): bitsandbytes' int8_vectorwise_quant, as Linear8bitLt stores W.
- int8_col:    one scale per column (input feature): the same function on W transposed.
- int8_block:  bitsandbytes' quantize_blockwise (its 8-bit dynamic code, one absmax per block of BLOCK values
  of the flattened matrix), as its 8-bit optimisers store their states.
- nf4, fp4:    bitsandbytes' quantize_4bit with quant_type nf4 / fp4 and its default block size (64), as
  Linear4bit stores W (without the double quantisation of the absmax values).
"""

from __future__ import annotations

WEIGHT_SCHEMES = ("int8_tensor", "int8_row", "int8_col", "int8_block", "nf4", "fp4")
BLOCK = 64  # int8_block's block size; equal to the 4-bit block size, so int8_block vs nf4 is 8 vs 4 bits per value


def _bnb():
    from ...models.load import quiet_libraries

    quiet_libraries()
    import bitsandbytes.functional as F

    return F


def _vectorwise(W):
    """Rows quantised to int8 with one absmax each, and back (bitsandbytes' LLM.int8 weight format)."""
    F = _bnb()
    CB, SCB, _ = F.int8_vectorwise_quant(W.contiguous().clone())
    return F.int8_vectorwise_dequant(CB, SCB)


def dequantized(W, scheme: str):
    """The dequantised copy of 2-D float32 weight `W` under `scheme` (see the module docstring)."""
    import torch

    W = W.detach().float()
    if scheme == "int8_tensor":
        return _vectorwise(W.reshape(1, -1)).reshape(W.shape)
    if scheme == "int8_row":
        return _vectorwise(W)
    if scheme == "int8_col":
        return _vectorwise(W.t()).t()
    F = _bnb()
    if scheme == "int8_block":
        q, state = F.quantize_blockwise(W.contiguous(), blocksize=BLOCK)
        return F.dequantize_blockwise(q, state)
    if scheme in ("nf4", "fp4"):
        q, state = F.quantize_4bit(W.contiguous(), blocksize=64, quant_type=scheme)
        return F.dequantize_4bit(q, state).reshape(W.shape).to(torch.float32)
    raise ValueError(f"unknown weight scheme {scheme!r}")


def weight_error(W, scheme: str) -> dict:
    """{'rel': ||W - W'||_F / ||W||_F, 'max_abs': max |W - W'|} for W' = dequantized(W, scheme)."""
    W = W.detach().float()
    diff = W - dequantized(W, scheme)
    norm = float(W.norm())
    return {"rel": float(diff.norm()) / norm if norm else 0.0, "max_abs": float(diff.abs().max())}


def linear_layers(model) -> list[tuple[str, object]]:
    """(name, module) of every torch.nn.Linear in the model, in module order."""
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def weight_errors(model) -> dict:
    """{layer name: {scheme: {'rel', 'max_abs'}}} for every linear layer, plus '(all layers)': the errors of all
    weights together (Frobenius norms summed over layers, the largest absolute error overall)."""
    out, sq_diff, sq_norm, worst = {}, {}, 0.0, {}
    for name, module in linear_layers(model):
        W = module.weight.detach().float()
        out[name] = {}
        sq_norm += float(W.norm()) ** 2
        for s in WEIGHT_SCHEMES:
            out[name][s] = err = weight_error(W, s)
            sq_diff[s] = sq_diff.get(s, 0.0) + (err["rel"] * float(W.norm())) ** 2
            worst[s] = max(worst.get(s, 0.0), err["max_abs"])
    out["(all layers)"] = {s: {"rel": (sq_diff[s] / sq_norm) ** 0.5 if sq_norm else 0.0, "max_abs": worst[s]}
                           for s in sq_diff}
    return out
