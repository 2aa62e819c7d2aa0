"""VeRA: one pair of frozen random projections shared by every target layer; each layer trains two scaling
vectors only (lambda_d over the rank, lambda_b over the outputs), through PEFT's VeraConfig."""

from __future__ import annotations

from ..options import option
from .base import Footprint, PeftMethod
from .lora import DEFAULT_TARGETS, GROUP


class VeRA(PeftMethod):
    name = "vera"
    trains = "two scaling vectors per layer over shared frozen random projections"
    mergeable = True
    default_lr = 1e-2
    lr_reason = ("few vectors, each starting small: 10x LoRA's rate, as the VeRA paper trains; stories260K, 60 "
                 "steps: 1e-2 -0.46, best 3e-2 to 1e-1 -0.51, 3e-1 -0.04")
    color = "#e377c2"
    peft_type = "VERA"
    peft_layer = "peft.tuners.vera.layer.VeraLayer"
    options = (("vera_r", int, option(256, "VeRA rank: the shared random projections' width", group=GROUP,
                                      range="[1, inf)")),)

    def peft_config(self, model, cfg):
        from peft import TaskType, VeraConfig

        return VeraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.vera_r, target_modules=cfg.target_modules)

    def footprint(self, arch, cfg) -> Footprint:
        lin, r = arch.linears(), cfg.vera_r
        targets = arch.targets(cfg.target_modules or DEFAULT_TARGETS[arch.family], "VeRA")
        return Footprint(trainable=arch.layers * sum(r + lin[t][1] for t in targets),
                         largest=max(r, *(lin[t][1] for t in targets)),
                         buffers=4 * r * (max(lin[t][0] for t in targets) + max(lin[t][1] for t in targets)),
                         adapters={t: _kept(r) for t in targets})


def _kept(r):
    """lambda_d * (x A^T) keeps the r-wide product; lambda_b * (... B^T) keeps the out-wide one (fp32 both)."""
    def kept(in_f, out_f, act, input_rg):
        return 4 * r + 4 * out_f, False

    return kept


METHODS = (VeRA(),)
