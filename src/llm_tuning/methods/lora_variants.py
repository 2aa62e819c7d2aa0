"""The LoRA family through PEFT's LoraConfig switches: DoRA, rsLoRA and PiSSA. Options, targets, saving and
merging are LoRA's (lora.py); each variant says what it changes.

- DoRA (use_dora): the weight split into a magnitude vector (trained) and a direction the LoRA update moves; PEFT
  runs its own layer (the in-place LoRA layer steps aside for it).
- rsLoRA (use_rslora): the update scaled by alpha / sqrt(r) instead of alpha / r, so a larger rank still learns.
- PiSSA (init_lora_weights="pissa"): A and B start from the base weight's principal singular vectors and the base
  keeps the residual. Its adapter is saved converted (PEFT's path_initial_model_for_weight_conversion: a rank-2r
  LoRA on the *original* base), so plain PeftModel.from_pretrained on the untouched base loads it.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref

from .base import Footprint
from .lora import LoRA, lora_kept


class DoRA(LoRA):
    """Weight-decomposed LoRA: a trained per-output-channel magnitude times the LoRA-updated direction."""

    name = "dora"
    trains = "LoRA's A·B and a magnitude per output channel"
    default_lr = 1e-3
    lr_reason = ("LoRA's rate, the magnitude starting at the weights' norms; stories260K, 60 steps: 1e-3 -0.47, best "
                 "1e-2 -0.61 (as LoRA's own: 1e-3 -0.47, 1e-2 -0.59), kept at LoRA's rate (docs/methods.md)")
    color = "#aec7e8"

    def lora_kwargs(self, cfg) -> dict:
        return {"use_dora": True}

    def footprint(self, arch, cfg) -> Footprint:
        lin, targets, lora = arch.linears(), self.targets(arch, cfg), super().footprint(arch, cfg)
        # With dropout PEFT computes the base output again from the dropped-out fp32 input, through an fp32 copy
        # of the weight (kept for the input's gradient): a layer constant over a half-precision base.
        copies = 4 * sum(lin[t][0] * lin[t][1] for t in targets) if cfg.lora_dropout > 0 else 0
        return dataclasses.replace(lora, trainable=lora.trainable + arch.layers * sum(lin[t][1] for t in targets),
                                   weight_copies=copies,
                                   adapters={t: _dora_kept(cfg.lora_r, cfg.lora_dropout) for t in targets})


def _dora_kept(r, dropout):
    """LoRA's, plus what the magnitude's rescaling keeps: the base output and the fp32 LoRA output, each scaled by
    the trained magnitude / norm (the norm itself is detached, as the DoRA paper suggests)."""
    lora = lora_kept(r, dropout)

    def kept(in_f, out_f, act, input_rg):
        b, keep = lora(in_f, out_f, act, input_rg)
        return b + (4 if dropout > 0 else act) * out_f + 4 * out_f, keep

    return kept


class RsLoRA(LoRA):
    """Rank-stabilised LoRA: the update scaled by alpha / sqrt(r)."""

    name = "rslora"
    default_lr = 1e-3
    lr_reason = ("LoRA's rate; its scale alpha/sqrt(r) is 2.8x LoRA's alpha/r at r 8; stories260K, 60 steps: "
                 "1e-3 -0.51, best 3e-3 -0.57, 3e-2 diverges (+0.82)")
    color = "#6baed6"

    def lora_kwargs(self, cfg) -> dict:
        return {"use_rslora": True}


class PiSSA(LoRA):
    """LoRA started from the principal singular values and vectors of each target weight."""

    name = "pissa"
    trains = "A·B started from the weight's principal singular vectors"
    trains_on_quantized = False  # its start is an SVD of the full-precision weight, which a quantised base lacks
    default_lr = 1e-3
    lr_reason = ("LoRA's rate: stories260K, 60 steps: 1e-4 -0.23, 1e-3 -0.51, 3e-3 and 1e-2 -0.58 (LoRA at "
                 "1e-3: -0.47)")
    color = "#08519c"

    def lora_kwargs(self, cfg) -> dict:
        return {"init_lora_weights": "pissa"}

    def apply(self, model, cfg):
        peft_model = super().apply(model, cfg)
        # The start, saved as PEFT's conversion needs it (init_lora_weights True: loading it changes no base weight).
        peft_model.peft_config["default"].init_lora_weights = True
        peft_model._pissa_start = tempfile.mkdtemp(prefix="llm-tuning-pissa-")
        weakref.finalize(peft_model, shutil.rmtree, peft_model._pissa_start, True)  # gone with the model
        peft_model.save_pretrained(peft_model._pissa_start)
        return peft_model

    def save(self, model, out_dir: str):
        start = getattr(model, "_pissa_start", None)
        if start is None:  # loaded for inference: already converted
            return super().save(model, out_dir)
        model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=start)


METHODS = (DoRA(), RsLoRA(), PiSSA())
