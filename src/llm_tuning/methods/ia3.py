from .base import Footprint, PeftMethod

# Output-side linears whose *input* IA3 scales (PEFT's feed-forward modules).
FEEDFORWARD = ("down_proj", "dense_4h_to_h", "fc2", "c_proj", "w2")
# PEFT's defaults (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING), for the estimate.
DEFAULT_TARGETS = {"bloom": ["query_key_value", "dense_4h_to_h"], "llama": ["k_proj", "v_proj", "down_proj"]}


class IA3(PeftMethod):
    """Learned per-channel scaling vectors on keys, values and the feed-forward input (PEFT's default targets)."""

    name = "ia3"
    trains = "scaling vectors on keys, values, MLP input"
    mergeable = True
    default_lr = 1e-2
    lr_reason = "scaling vectors near 1 need large steps"
    color = "#8c564b"
    peft_type = "IA3"
    peft_layer = "peft.tuners.ia3.layer.IA3Layer"

    def peft_config(self, model, cfg):
        from peft import IA3Config, TaskType

        kwargs = {}
        if cfg.target_modules:
            # With explicit targets, none is treated as feed-forward unless it is an MLP output projection.
            ff = [m for m in cfg.target_modules if m in FEEDFORWARD]
            kwargs = dict(target_modules=cfg.target_modules, feedforward_modules=ff)
        return IA3Config(task_type=TaskType.CAUSAL_LM, **kwargs)

    def footprint(self, arch, cfg) -> Footprint:
        lin = arch.linears()
        names = arch.targets(cfg.target_modules or DEFAULT_TARGETS[arch.family], "IA3")
        sizes = [lin[t][0] if t in FEEDFORWARD else lin[t][1] for t in names]
        return Footprint(trainable=arch.layers * sum(sizes), largest=max(sizes),
                         adapters={t: _kept(t in FEEDFORWARD) for t in names})


def _kept(feedforward: bool):
    """Feed-forward: x.to(fp32) * scale keeps the fp32 input; otherwise base output * scale keeps the output."""
    def kept(in_f, out_f, act, input_rg):
        return (4 * in_f if feedforward else act * out_f), False

    return kept


METHODS = (IA3(),)
