"""LN tuning: only the normalisation layers train (PEFT's LNTuningConfig: a trainable copy of each layer norm of
the decoder and the final norm), the smallest adapter here after prompt tuning."""

from __future__ import annotations

from .base import Footprint, PeftMethod


class LNTuning(PeftMethod):
    name = "lntuning"
    trains = "the layer norms' weights (and biases)"
    mergeable = True
    default_lr = 1e-2
    lr_reason = ("norm weights start near their trained values: IA3's rate for its scales; stories260K, 60 "
                 "steps: 1e-2 -0.49, best 3e-2 to 1e-1 -0.54, 3e-1 -0.28")
    color = "#7f7f7f"
    peft_type = "LN_TUNING"
    # The norm copies stay in the base's precision: an fp32 norm weight over a half-precision base makes the norm's
    # output fp32 (weight * normed promotes), and every op after it would then run in fp32.
    in_base_dtype = True
    peft_layer = "peft.tuners.ln_tuning.layer.LNTuningLayer"

    def peft_config(self, model, cfg):
        from peft import LNTuningConfig, TaskType

        return LNTuningConfig(task_type=TaskType.CAUSAL_LM)

    def footprint(self, arch, cfg) -> Footprint:
        per_norm = 2 * arch.hidden if arch.family == "bloom" else arch.hidden  # LayerNorm: weight + bias
        n = (2 * arch.layers + 1) * per_norm
        return Footprint(trainable=n, largest=per_norm, added=n, norm_weights=True, norm_biases=True)


METHODS = (LNTuning(),)
