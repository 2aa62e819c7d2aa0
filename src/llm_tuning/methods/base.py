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


def init_token_ids(tokenizer, text: str, n: int) -> list[int]:
    """`n` token ids to start virtual tokens (or prefix keys/values) from: `text`'s, repeated to length.

    A text the tokenizer cannot spell (half or more of its tokens unknown or byte-fallback pieces: the default
    Chinese text on an English 512-token vocabulary) starts the model on junk context: stories260K's held-out loss
    4.10 -> 4.59 before any training. Such a text gives way to the beginning-of-text token, which the model sees
    at the start of every text (4.10 -> 4.10); no bos token: the text as it is."""
    ids = tokenizer(text or "", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    foreign = sum(i == tokenizer.unk_token_id or (p.startswith("<0x") and p.endswith(">")) for i, p in zip(ids, pieces))
    if (not ids or 2 * foreign >= len(ids)) and tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id] * n
    ids = ids or [tokenizer.eos_token_id]
    return (ids * (n // len(ids) + 1))[:n]
