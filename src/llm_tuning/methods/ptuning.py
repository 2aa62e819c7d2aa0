from ..options import option
from ..errors import UserError
from .base import Footprint, PeftMethod, encoder_hidden_size
from .prompt import GROUP


class PTuning(PeftMethod):
    """Virtual tokens produced by a small encoder (MLP or bidirectional LSTM) over trainable embeddings."""

    name = "ptuning"
    trains = "virtual tokens through an MLP or LSTM encoder"
    not_mergeable_reason = "its virtual tokens are extra inputs produced by an encoder, not a change to any weight."
    default_lr = 1e-2
    lr_reason = "learns at 1e-2 and 3e-2 alike (-0.32 at length 128 on stories260K)"
    color = "#17becf"
    peft_type = "P_TUNING"
    prompt_learning = True  # its adapter adds inputs (virtual tokens, a prefix), no layer
    packing = False  # its virtual tokens go once in front of each row: in a packed row only the first example sees them
    options = (
        ("encoder", str, option("mlp", "p-tuning prompt encoder", choices=("mlp", "lstm"), group=GROUP)),
        ("encoder_hidden_size", "int | None", option(None, "p-tuning encoder / prefix projection width (default: "
                                                           "the model's hidden size)", group=GROUP,
                                                           range="[1, inf)")),
    )
    variants = {"ptuning-mlp": {"encoder": "mlp"}, "ptuning-lstm": {"encoder": "lstm"}}

    def describe(self, cfg) -> str:
        return f"{cfg.encoder} encoder"

    def footprint(self, arch, cfg) -> Footprint:
        h, n, e = arch.hidden, cfg.num_virtual_tokens, cfg.encoder_hidden_size or arch.hidden
        if cfg.encoder == "mlp":  # Linear(h, e), Linear(e, e), Linear(e, h)
            enc = (h * e + e) + (e * e + e) + (e * h + h)
        elif cfg.encoder == "lstm":  # 2-layer bidirectional LSTM(h -> e), then Linear(2e, 2e), Linear(2e, h)
            lstm = 2 * (4 * e * (h + e) + 8 * e) + 2 * (4 * e * (2 * e + e) + 8 * e)
            enc = lstm + (2 * e * 2 * e + 2 * e) + (2 * e * h + h)
        else:
            raise UserError(f"--encoder {cfg.encoder!r} is unknown; choose mlp or lstm")
        return Footprint(trainable=n * h + enc, largest=max(n, 2 * e) * h, in_layers=False, input_tokens=n)

    def peft_config(self, model, cfg):
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        kinds = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
        if cfg.encoder not in kinds:
            raise UserError(f"--encoder {cfg.encoder!r} is unknown; choose mlp or lstm")
        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                   encoder_reparameterization_type=kinds[cfg.encoder],
                                   encoder_hidden_size=encoder_hidden_size(model, cfg))


METHODS = (PTuning(),)
