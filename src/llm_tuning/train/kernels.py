"""`--kernels auto|liger|none`: which loss and layer kernels a run uses, per device.

- liger: Liger's Triton kernels (pip install 'llm-tuning[gpu]'), CUDA only. Llama-family models get Liger's own
  apply function (`_apply_liger_kernel_to_instance`: RMSNorm, SwiGLU, RoPE) with its fused linear cross-entropy
  left off there, because the loss runs here: the project's response-only loss (fastloss.py: the backbone once,
  only learned positions through the output layer) with Liger's `LigerFusedLinearCrossEntropyLoss` in place of
  the CPU's fused function. Liger has no apply function for Bloom; its LayerNorm kernel is bound onto Bloom's
  layer norms the way Liger's own `_patch_layer_norm_module` does it.
- auto: liger on CUDA when it imports; on the CPU the project's fused loss (fastloss.py).
- liger on a CPU runs only under Triton's interpreter (`TRITON_INTERPRET=1`, triton_interpreter.py): slowly, to
  check the wiring (tests/test_kernels.py does, against the fused loss), never chosen by auto.
- none: transformers' stock forward and loss.

The CPU's fused loss steps aside on CUDA (auto without Liger gives the stock loss): measured on an H200, Llama-2-7B
LoRA fp16, it cost 7 % (2,746 tokens/s with it, 2,948 without; ../shared/gpu/README.md).
"""

from __future__ import annotations

import os

from ..errors import UserError

LIGER_ON_CPU = ("--kernels liger needs a CUDA GPU: Liger's kernels are Triton GPU code (TRITON_INTERPRET=1 runs "
                "them on a CPU, slowly, as a check); use --kernels auto (the project's fused loss on the CPU) or none")


def interpreted() -> bool:
    """Triton's interpreter is on: Triton kernels run on the CPU, in numpy (triton_interpreter.py)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _import_liger():
    if interpreted():
        from .triton_interpreter import fill_gaps

        fill_gaps()  # before Liger's kernels import
    import liger_kernel.transformers  # noqa: F401


def liger_available() -> bool:
    """True when liger_kernel imports (it needs Triton, which needs a GPU build of torch to be of use)."""
    try:
        _import_liger()
    except Exception:  # ImportError, or Triton failing to load its runtime on a CPU-only machine
        return False
    return True


def resolve(kernels: str, fast_loss: bool, cuda: bool, liger: bool | None = None,
            interpreter: bool | None = None) -> str:
    """The loss path: "liger", "fused" (the CPU fused loss, fastloss.py) or "stock". Raises one UserError line
    where the choice cannot run. `liger`: whether Liger imports (asked only when needed); `interpreter`: whether
    Triton's interpreter is on (read from the environment when None)."""
    if kernels == "liger":
        if not (cuda or (interpreted() if interpreter is None else interpreter)):
            raise UserError(LIGER_ON_CPU)
        if not (liger_available() if liger is None else liger):
            raise UserError("--kernels liger: liger-kernel is not installed (or Triton does not load); "
                            "pip install 'llm-tuning[gpu]', or use --kernels auto")
        return "liger"
    if kernels == "none":
        return "stock"
    if cuda:  # auto
        return "liger" if (liger_available() if liger is None else liger) else "stock"
    return "fused" if fast_loss else "stock"


def apply_liger(model) -> str:
    """Liger's layer kernels on the base model, before the method wraps it. Returns what was patched."""
    _import_liger()
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    model_type = getattr(model.config, "model_type", None)
    if model_type in MODEL_TYPE_TO_APPLY_LIGER_FN:
        # the loss runs in our Trainer (liger_linear_cross_entropy_sum), not in a patched model forward
        _apply_liger_kernel_to_instance(model, fused_linear_cross_entropy=False, cross_entropy=False)
        return f"Liger kernels for {model_type} (norms, MLP, RoPE)"
    if model_type == "bloom":
        return _liger_layer_norms(model)
    return f"no Liger layer kernels for {model_type}"


def _liger_layer_norms(model) -> str:
    import torch
    from liger_kernel.transformers.monkey_patch import _patch_layer_norm_module

    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    for m in norms:
        m.hidden_size = m.normalized_shape[0]
        _patch_layer_norm_module(m, eps=m.eps)
    return f"Liger LayerNorm on {len(norms)} Bloom layer norms"


_LIGER_LOSS = None


def liger_linear_cross_entropy_sum(hidden, head, target):
    """fastloss.linear_cross_entropy_sum's contract (sum over rows of CE(hidden @ W^T + b, target)) by Liger's
    fused linear cross-entropy: chunked on the GPU, the logits never whole."""
    global _LIGER_LOSS
    if _LIGER_LOSS is None:
        _import_liger()
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        _LIGER_LOSS = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    return _LIGER_LOSS(head.weight, hidden, target, head.bias)
