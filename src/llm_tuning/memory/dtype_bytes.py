"""Bytes per element as the estimate counts them: of each precision, of a quantised weight, of the dtype a
checkpoint is stored in."""

from __future__ import annotations

from ..models.arch import _get
from ..models.precision import PRECISION_DTYPES


DTYPE_BYTES = {k: nbytes for k, (_, nbytes) in PRECISION_DTYPES.items()}
FP32 = 4
INT64 = 8
# NF4 with double quantisation (models.quantization_config): 4 bits per weight, an 8-bit absmax per block of
# 64 weights, and an fp32 absmax per 256 of those blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

STORED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PRECISION_DTYPE = {k: name for k, (name, _) in PRECISION_DTYPES.items()}


def stored_dtype(config) -> str | None:
    """The dtype the checkpoint's weights are stored in (config.json's dtype / torch_dtype), where it says (a
    loaded config or a config dict; None for an Arch, which has no such field)."""
    d = _get(config, "dtype", "torch_dtype")
    d = str(d).replace("torch.", "") if d is not None else None
    return d if d in STORED_BYTES else None
