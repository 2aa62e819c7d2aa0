from ..errors import UserError
from .base import Method


class Full(Method):
    """Every parameter trains; the output is a whole model."""

    name = "full"
    trains_on_quantized = False
    default_lr = 1e-4

    def apply(self, model, cfg):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base, adapter_dir: str):
        from ..models import load_model

        return load_model(adapter_dir, precision="fp32" if base is None else _precision_of(base))

    def check_mergeable(self):
        raise UserError("full fine-tuning wrote a whole model already: nothing to merge; use its folder as --model")


def _precision_of(model) -> str:
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.dtype, "fp32")
