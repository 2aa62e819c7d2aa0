from ..errors import UserError
from .base import PeftMethod, encoder_hidden_size


class PTuning(PeftMethod):
    """Virtual tokens produced by a small encoder (MLP or bidirectional LSTM) over trainable embeddings."""

    name = "ptuning"
    not_mergeable_reason = "its virtual tokens are extra inputs produced by an encoder, not a change to any weight."
    default_lr = 1e-2

    def peft_config(self, model, cfg):
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        kinds = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
        if cfg.encoder not in kinds:
            raise UserError(f"--encoder {cfg.encoder!r} is unknown; choose mlp or lstm")
        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                   encoder_reparameterization_type=kinds[cfg.encoder],
                                   encoder_hidden_size=encoder_hidden_size(model, cfg))
