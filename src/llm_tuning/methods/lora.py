from .base import PeftMethod


class LoRA(PeftMethod):
    """Low-rank updates W + (alpha/r)·B·A on the target linear layers.

    Default targets are PEFT's per-architecture choice (Bloom: query_key_value; Llama: q_proj, v_proj).
    """

    name = "lora"
    mergeable = True
    default_lr = 1e-3

    def peft_config(self, model, cfg):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules)
