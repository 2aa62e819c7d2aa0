from .base import PeftMethod, encoder_hidden_size


class PrefixTuning(PeftMethod):
    """Trainable key/value prefixes for every attention layer (optionally through a projection MLP)."""

    name = "prefix"
    not_mergeable_reason = "its prefixes are extra attention keys and values, not a change to any weight."
    default_lr = 1e-2

    def peft_config(self, model, cfg):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                  prefix_projection=cfg.prefix_projection,
                                  encoder_hidden_size=encoder_hidden_size(model, cfg))
