"""Liger's kernels on a CPU through Triton's interpreter (`TRITON_INTERPRET=1`), to check the Liger path's wiring
(train/kernels.py) on a machine without a GPU. The kernels run in numpy one program at a time: a tiny model's step
takes seconds, so this is a check, never a way to train.

Triton 3.9's interpreter has two gaps that Liger's kernels meet. They are filled here as compiled Triton behaves,
because no library fills them (triton-lang/triton leaves both to the compiler):
- a Python float argument (a norm's eps, SwiGLU's gate multiplier) reaches the kernel as a Python float, and
  `eps.to(tl.float32)` fails; compiled Triton passes it as an fp32 scalar (`mangle_type` says "fp32");
- libdevice functions are compiler externs that the interpreter cannot run (they return None); Liger's LayerNorm
  takes `rsqrt` from libdevice, which is bound here to `tl.math.rsqrt`, the same function the interpreter runs.
Imported only under the interpreter: `triton.jit` below decides at import time whether it compiles or interprets.
"""

from __future__ import annotations

import sys

import numpy as np
import triton
import triton.language as tl


@triton.jit
def _rsqrt(x):
    return tl.math.rsqrt(x)


def fill_gaps() -> None:
    """Idempotent; call before Liger's kernels are imported (Liger binds libdevice's rsqrt at import)."""
    from triton.runtime import interpreter

    if not getattr(interpreter._implicit_cvt, "_fills_floats", False):
        plain = interpreter._implicit_cvt

        def implicit_cvt(arg):
            if isinstance(arg, float):
                ty = tl.str_to_ty(triton.runtime.jit.mangle_type(arg), None)
                return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), ty), ty)
            return plain(arg)

        implicit_cvt._fills_floats = True
        interpreter._implicit_cvt = implicit_cvt
    import triton.language.extra.libdevice as libdevice

    libdevice.rsqrt = _rsqrt
    layer_norm = sys.modules.get("liger_kernel.ops.layer_norm")  # already imported: rebind its copy too
    if layer_norm is not None and hasattr(layer_norm, "rsqrt"):
        layer_norm.rsqrt = _rsqrt
