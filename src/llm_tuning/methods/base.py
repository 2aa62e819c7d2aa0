"""The one small interface every method implements.

apply(model, cfg)      -> the model to train (trainable parameters set)
save(model, dir)       -> write the adapter (or the model, for full fine-tuning)
load(base, dir)        -> the trained model for inference, from a fresh base
merge(model)           -> a plain transformers model with the adapter folded in (mergeable methods only;
                          check_mergeable() says why not, before anything is loaded)
"""

from __future__ import annotations

from ..errors import UserError


class Method:
    name = ""
    mergeable = False
    default_lr = 1e-4
    trains_on_quantized = True  # False where the method updates the base's own (then integer) weights
    # Why the method cannot be merged, and how to serve it instead (shown by `merge`).
    not_mergeable_reason = ""

    def apply(self, model, cfg):
        raise NotImplementedError

    def save(self, model, out_dir: str):
        model.save_pretrained(out_dir)

    def load(self, base, adapter_dir: str):
        raise NotImplementedError

    def check_mergeable(self):
        if not self.mergeable:
            raise UserError(
                f"a {self.name} adapter cannot be merged into the base model: {self.not_mergeable_reason} "
                f"Serve it with the adapter instead: llm-tuning generate --model BASE --adapter ADAPTER_DIR"
            )

    def merge(self, model):
        raise NotImplementedError


class PeftMethod(Method):
    """A method PEFT implements: we only build its config."""

    def peft_config(self, model, cfg):
        raise NotImplementedError

    def apply(self, model, cfg):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, cfg))

    def load(self, base, adapter_dir: str):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, adapter_dir)

    def merge(self, model):
        self.check_mergeable()
        return model.merge_and_unload()


def hidden_size(model) -> int:
    return model.config.hidden_size


def encoder_hidden_size(model, cfg) -> int:
    return cfg.encoder_hidden_size or hidden_size(model)
