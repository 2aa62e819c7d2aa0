"""OFT: each target layer's input rotated by a trained block-diagonal orthogonal matrix (Cayley-parametrised
skew-symmetric blocks), so the weights' angles to each other are kept; PEFT's OFTConfig."""

from __future__ import annotations

from ..options import option
from .base import Footprint, PeftMethod
from .lora import DEFAULT_TARGETS, GROUP


class OFT(PeftMethod):
    name = "oft"
    trains = "a block-diagonal orthogonal rotation of each target's input"
    mergeable = True
    default_lr = 1e-3
    lr_reason = ("the rotation starts at the identity and moves like LoRA's B: LoRA's rate; stories260K, 60 steps: "
                 "1e-3 -0.53, best 3e-3 -0.61, 3e-2 -0.41")
    color = "#bcbd22"
    peft_type = "OFT"
    peft_layer = "peft.tuners.oft.layer.OFTLayer"
    options = (("oft_block_size", int, option(32, "OFT block size (must divide the target layers' input width)",
                                              group=GROUP, range="[2, inf)")),)

    def peft_config(self, model, cfg):
        from peft import OFTConfig, TaskType

        return OFTConfig(task_type=TaskType.CAUSAL_LM, r=0, oft_block_size=cfg.oft_block_size,
                         target_modules=cfg.target_modules)

    def footprint(self, arch, cfg) -> Footprint:
        lin, b = arch.linears(), cfg.oft_block_size
        targets = arch.targets(cfg.target_modules or DEFAULT_TARGETS[arch.family], "OFT")
        per_target = [lin[t][0] // b * (b * (b - 1) // 2) for t in targets]  # blocks x upper triangle
        # Cayley-Neumann: the skew blocks and their powers, kept by the batched products (and the rotation, kept by
        # the einsum when the input needs a gradient): 4 x [blocks x b x b] fp32 per target, in x b elements each
        return Footprint(trainable=arch.layers * sum(per_target), largest=max(per_target),
                         layer_constant=sum(4 * 4 * lin[t][0] * b for t in targets),
                         adapters={t: _kept for t in targets})


def _kept(in_f, out_f, act, input_rg):
    """The rotation (an einsum with the trained blocks) keeps its fp32 input: the input itself when fp32."""
    return (4 * in_f, False) if act != 4 else (0, True)


METHODS = (OFT(),)
