from ..options import option
from ..errors import UserError
from .base import Footprint, PeftMethod, init_token_ids

INITS = ("text", "vocab", "random")
GROUP = "prompt / p-tuning / prefix"


class PromptTuning(PeftMethod):
    """Trainable virtual-token embeddings prepended to the input.

    prompt_init "text" (hard prompt) starts them from the embeddings of `prompt_text`; "vocab" from the embeddings
    of tokens drawn from the vocabulary (PEFT's SAMPLE_VOCAB, one of the prompt-tuning paper's initialisations);
    "random" (soft prompt) at random (PEFT's N(0, 1), 3x the norm of stories260K's embeddings: drawn at the
    embeddings' own scale instead, it learned less at max length 512, see docs/methods.md).

    A text the tokenizer cannot spell (the default Chinese text on an English vocabulary: byte pieces) gives way to
    the bos embedding (base.init_token_ids): the byte pieces raised stories260K's loss from 4.10 to 4.59 before any
    training, bos leaves it at 4.10.

    Learning rate 0.3, the prompt-tuning paper's: ten vectors need large steps to move in a short run. At 1e-1 the
    random start (0.85 above the base's loss on stories260K before training) was still worse than no training
    after 60 steps at length 512 at one seed of three; 0.9 learned as much, but 2.7, one x3 step above it,
    diverged at length 128 (docs/methods.md).
    """

    name = "prompt"
    trains = "virtual-token embeddings"
    not_mergeable_reason = "its virtual tokens are extra inputs, not a change to any weight."
    default_lr = 3e-1
    lr_reason = ("the prompt-tuning paper's; at 1e-1 the random start was still above the base after 60 steps at "
                 "length 512 (one seed of three); 0.9 learned as much, 2.7 diverged")
    color = "#2ca02c"
    peft_type = "PROMPT_TUNING"
    prompt_learning = True  # its adapter adds inputs (virtual tokens, a prefix), no layer
    packing = False  # its virtual tokens go once in front of each row: in a packed row only the first example sees them
    options = (
        ("num_virtual_tokens", int, option(10, "virtual tokens (prompt, ptuning, prefix)", group=GROUP,
                                           range="[1, inf)")),
        ("prompt_init", str, option("text", "prompt tuning start: text (hard prompt), vocab (embeddings of sampled "
                                            "vocabulary tokens) or random (soft); a text the tokenizer cannot spell "
                                            "starts from the bos token", choices=INITS, group=GROUP)),
        ("prompt_text", str, option("下面是一条指令，请写出恰当的回答。", "text whose embeddings start a hard prompt (and "
                                                                "prefix tuning's keys/values)", group=GROUP)),
    )
    variants = {"prompt-text": {"prompt_init": "text"}, "prompt-random": {"prompt_init": "random"}}

    def footprint(self, arch, cfg) -> Footprint:
        n = cfg.num_virtual_tokens * arch.hidden
        return Footprint(trainable=n, largest=n, in_layers=False, input_tokens=cfg.num_virtual_tokens)

    def peft_config(self, model, cfg):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        if cfg.prompt_init not in INITS:
            raise UserError(f"--prompt-init {cfg.prompt_init!r} is unknown; choose one of {', '.join(INITS)}")
        kwargs = {}
        if cfg.prompt_init == "text":
            if not (cfg.prompt_text or "").strip():
                raise UserError("--prompt-init text needs a non-empty --prompt-text")
            if _spelled_ids(cfg) is None:
                kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_text,
                              tokenizer_name_or_path=cfg.tokenizer or cfg.model)
            else:  # a text this tokenizer cannot spell: apply() starts from the bos embedding instead
                kwargs = dict(prompt_tuning_init=PromptTuningInit.RANDOM)
        elif cfg.prompt_init == "vocab":
            kwargs = dict(prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        else:
            kwargs = dict(prompt_tuning_init=PromptTuningInit.RANDOM)
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **kwargs)

    def apply(self, model, cfg):
        peft_model = super().apply(model, cfg)
        weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
        embeddings = model.get_input_embeddings().weight
        if cfg.prompt_init == "text" and (ids := _spelled_ids(cfg)) is not None:
            import torch

            with torch.no_grad():
                weight.copy_(embeddings[torch.tensor(ids, device=embeddings.device)].to(weight))
        return peft_model


def _spelled_ids(cfg):
    """None where PEFT's own TEXT initialisation applies; else the ids init_token_ids falls back to (bos)."""
    from ..models import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    ids = init_token_ids(tok, cfg.prompt_text, cfg.num_virtual_tokens)
    text_ids = tok(cfg.prompt_text or "", add_special_tokens=False)["input_ids"]
    return None if ids[:len(text_ids)] == text_ids[:len(ids)] else ids


METHODS = (PromptTuning(),)
