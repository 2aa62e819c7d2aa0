"""Liger's kernels on a CPU through Triton's interpreter (`TRITON_INTERPRET=1`), to check the Liger path's wiring
(train/kernels.py) on a machine without a GPU. The kernels run in numpy one program at a time: a tiny model's step
takes seconds, so this is a check, never a way to train.

Triton 3.9's interpreter has three gaps that Liger's kernels meet. They are filled here as compiled Triton behaves,
because no library fills them (triton-lang/triton leaves them to the compiler):
- a Python float argument (a norm's eps, SwiGLU's gate multiplier) reaches the kernel as a Python float, and
  `eps.to(tl.float32)` fails; compiled Triton passes it as an fp32 scalar (`mangle_type` says "fp32");
- libdevice functions are compiler externs that the interpreter cannot run (they return None); Liger's LayerNorm
  takes `rsqrt` from libdevice, which is bound here to `tl.math.rsqrt`, the same function the interpreter runs;
- bfloat16 values are stored as their uint16 bit patterns (numpy has no bfloat16), and arithmetic, comparisons and
  sums on them run on those integers: Liger's SwiGLU forward (`silu(a).cast(b.dtype) * b`) gave values like 1e+32
  and a nan loss in bf16 training. Here they run in fp32 and round back to bf16 (round to nearest even), as a
  GPU computes a bf16 operation.
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
    _fill_bf16(interpreter)
    import triton.language.extra.libdevice as libdevice

    libdevice.rsqrt = _rsqrt
    layer_norm = sys.modules.get("liger_kernel.ops.layer_norm")  # already imported: rebind its copy too
    if layer_norm is not None and hasattr(layer_norm, "rsqrt"):
        layer_norm.rsqrt = _rsqrt


_BITWISE = (np.bitwise_and, np.bitwise_or, np.bitwise_xor, np.left_shift, np.right_shift)


def _f32(bits):
    """bf16 bit patterns (uint16) -> float32 values."""
    import torch

    return torch.from_numpy(np.array(bits, dtype=np.uint16).view(np.int16)).view(torch.bfloat16).float().numpy()


def _bf16(values):
    """float32 values -> bf16 bit patterns, rounded to nearest even (torch's conversion)."""
    import torch

    t = torch.from_numpy(np.array(values, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def _is_bf16(handle) -> bool:
    return handle.dtype.scalar == tl.bfloat16


def _fill_bf16(interpreter) -> None:
    """The interpreter's bf16 operations on values, not bit patterns (see the module's docstring)."""
    B, T = interpreter.InterpreterBuilder, interpreter.TensorHandle
    if getattr(B, "_fills_bf16", False):
        return
    binary, unary, fma, dot = B.binary_op, B.unary_op, B.create_fma, B.create_dot
    reduce_sum, min_max = interpreter.ReduceOps.sum, interpreter.ReduceOps.min_max

    def f32(h):
        return T(_f32(h.data), tl.float32) if _is_bf16(h) else h

    def binary_op(self, lhs, rhs, op):
        if not _is_bf16(lhs) or op in _BITWISE:
            return binary(self, lhs, rhs, op)
        out = op(_f32(lhs.data), _f32(rhs.data))  # a comparison: bools, stored as the interpreter stores them
        return T(out.astype(np.uint16) if out.dtype == np.bool_ else _bf16(out), tl.bfloat16)

    def unary_op(self, arg, op):
        return T(_bf16(op(_f32(arg.data))), tl.bfloat16) if _is_bf16(arg) else unary(self, arg, op)

    def create_fma(self, x, y, z):
        if not _is_bf16(z):
            return fma(self, x, y, z)
        return T(_bf16(fma(self, f32(x), f32(y), f32(z)).data), tl.bfloat16)

    def create_rsqrt(self, arg):
        return self.unary_op(arg, lambda a: 1 / np.sqrt(a))

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if not _is_bf16(d):
            return dot(self, f32(a), f32(b), d, input_precision, max_num_imprecise_acc)
        return T(_bf16(dot(self, f32(a), f32(b), f32(d), input_precision, max_num_imprecise_acc).data), tl.bfloat16)

    def value_reduce(plain):
        def reduce(self, input, *args, **kwargs):
            if input.dtype.scalar != tl.bfloat16:
                return plain(self, input, *args, **kwargs)
            as_f32 = tl.core.tensor(f32(input.handle), input.type.with_element_ty(tl.float32))
            out = plain(self, as_f32, *args, **kwargs)
            return _back_to_bf16(out)
        return reduce

    B.binary_op, B.unary_op, B.create_fma, B.create_rsqrt, B.create_dot = (binary_op, unary_op, create_fma,
                                                                           create_rsqrt, create_dot)
    interpreter.ReduceOps.sum = value_reduce(reduce_sum)
    interpreter.ReduceOps.min_max = value_reduce(min_max)
    B._fills_bf16 = True


def _back_to_bf16(out):
    """A reduction's fp32 result (a tensor, or a (values, indices) pair) as bf16."""
    if isinstance(out, tuple):
        return (_back_to_bf16(out[0]),) + out[1:]
    if out.dtype.scalar != tl.float32:
        return out
    from triton.runtime.interpreter import TensorHandle

    return tl.core.tensor(TensorHandle(_bf16(out.handle.data), tl.bfloat16), out.type.with_element_ty(tl.bfloat16))
