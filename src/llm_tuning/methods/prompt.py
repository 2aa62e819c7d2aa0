from ..errors import UserError
from .base import PeftMethod

INITS = ("text", "vocab", "random")


class PromptTuning(PeftMethod):
    """Trainable virtual-token embeddings prepended to the input.

    prompt_init "text" (hard prompt) starts them from the embeddings of `prompt_text`; "vocab" from the embeddings
    of tokens drawn from the vocabulary (PEFT's SAMPLE_VOCAB, one of the prompt-tuning paper's initialisations);
    "random" (soft prompt) at random, at the scale of the model's own embeddings.

    PEFT's "random" is torch's nn.Embedding default, N(0, 1) per element: a vector of norm sqrt(hidden). A model's
    own embeddings are far smaller (stories260K: element std 0.31, row norm 2.4 against 8.0; most pretrained
    models are at std 0.01-0.05), so the virtual tokens start as inputs the model has never seen, dominate every
    attention score and take most of a short run to shrink (stories260K, 60 steps: held-out loss ended above the
    untouched model's). Here they are drawn per dimension from the mean and std of the embedding matrix instead.

    Learning rate 1e-1 (the paper trains prompts at 0.3): ten vectors of embedding scale need large steps to move
    in a short run; at 3e-2 the text-initialised prompt hardly left its start in 60 steps (stories260K), at 3e-1
    the random one overshoots.
    """

    name = "prompt"
    not_mergeable_reason = "its virtual tokens are extra inputs, not a change to any weight."
    default_lr = 1e-1

    def peft_config(self, model, cfg):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        if cfg.prompt_init not in INITS:
            raise UserError(f"--prompt-init {cfg.prompt_init!r} is unknown; choose one of {', '.join(INITS)}")
        kwargs = {}
        if cfg.prompt_init == "text":
            if not (cfg.prompt_text or "").strip():
                raise UserError("--prompt-init text needs a non-empty --prompt-text")
            kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_text,
                          tokenizer_name_or_path=cfg.tokenizer or cfg.model)
        elif cfg.prompt_init == "vocab":
            kwargs = dict(prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        else:
            kwargs = dict(prompt_tuning_init=PromptTuningInit.RANDOM)
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **kwargs)

    def apply(self, model, cfg):
        peft_model = super().apply(model, cfg)
        if cfg.prompt_init == "random":
            like_embeddings(peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight,
                            model.get_input_embeddings().weight)
        return peft_model


def like_embeddings(weight, embeddings):
    """Redraw `weight` (rows of virtual tokens) from N(mean, std) of each dimension of the model's `embeddings`."""
    import torch

    with torch.no_grad():
        emb = embeddings.detach().float().to(weight.device)
        mean, std = emb.mean(0), emb.std(0)
        weight.copy_((mean + std * torch.randn(weight.shape, device=weight.device)).to(weight.dtype))
