from ..errors import UserError
from .base import Footprint, Method


class Full(Method):
    """Every parameter trains; the output is a whole model."""

    name = "full"
    trains = "every weight"
    trains_on_quantized = False
    in_base_dtype = True
    saves_model = True
    default_lr = 1e-4
    lr_reason = "the usual full fine-tuning rate for AdamW"
    color = "#9467bd"

    def apply(self, model, cfg):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def footprint(self, arch, cfg) -> Footprint:
        from ..models.arch import count_params

        largest = max(arch.vocab * arch.hidden, max(i * o for i, o, _ in arch.linears().values()))
        return Footprint(trainable=count_params(arch), largest=largest, linear_weights=True, linear_outputs=True,
                         norm_weights=True, norm_biases=True, embedding_norm=True)

    def load(self, base, adapter_dir: str):
        from ..models.load import load_model, precision_of

        return load_model(adapter_dir, precision="fp32" if base is None else precision_of(base.dtype))

    def check_mergeable(self):
        raise UserError("full fine-tuning wrote a whole model already: nothing to merge; use its folder as --model")


METHODS = (Full(),)
