from ..errors import UserError
from .base import PeftMethod


class PromptTuning(PeftMethod):
    """Trainable virtual-token embeddings prepended to the input.

    prompt_init "text" (hard prompt) starts them from the embeddings of `prompt_text`;
    "random" (soft prompt) starts them at random.
    """

    name = "prompt"
    not_mergeable_reason = "its virtual tokens are extra inputs, not a change to any weight."
    default_lr = 3e-2

    def peft_config(self, model, cfg):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        if cfg.prompt_init not in ("text", "random"):
            raise UserError(f"--prompt-init {cfg.prompt_init!r} is unknown; choose text or random")
        kwargs = {}
        if cfg.prompt_init == "text":
            if not (cfg.prompt_text or "").strip():
                raise UserError("--prompt-init text needs a non-empty --prompt-text")
            kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_text,
                          tokenizer_name_or_path=cfg.tokenizer or cfg.model)
        else:
            kwargs = dict(prompt_tuning_init=PromptTuningInit.RANDOM)
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **kwargs)
