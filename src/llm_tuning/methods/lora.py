from ..options import option
from .base import Footprint, PeftMethod

# PEFT's default targets per architecture family (peft.utils.constants, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_
# MAPPING): the estimate counts them without building the model.
DEFAULT_TARGETS = {"bloom": ["query_key_value"], "llama": ["q_proj", "v_proj"]}
GROUP = "lora family (lora, dora, rslora, pissa), vera, oft, ia3"


class LoRA(PeftMethod):
    """Low-rank updates W + (alpha/r)·B·A on the target linear layers.

    Default targets are PEFT's per-architecture choice (Bloom: query_key_value; Llama: q_proj, v_proj).
    """

    name = "lora"
    trains = "low-rank A·B beside the target linears"
    mergeable = True
    default_lr = 1e-3
    lr_reason = "the LoRA paper's order of magnitude"
    color = "#1f77b4"
    peft_type = "LORA"
    peft_layer = "peft.tuners.lora.layer.LoraLayer"
    options = (
        ("lora_r", int, option(8, "LoRA rank (and the rank of DoRA, rsLoRA, PiSSA)", group=GROUP,
                                     range="[1, inf)")),
        ("lora_alpha", int, option(16, "LoRA scale numerator (the update is scaled by alpha / r; rslora: alpha / "
                                        "sqrt(r))", group=GROUP, range="[1, inf)")),
        ("lora_dropout", float, option(0.05, "dropout on the LoRA input", group=GROUP, range="[0, 1)")),
        ("target_modules", "list[str] | None", option(None, "comma-separated module names for the LoRA family, "
                                                            "VeRA, OFT and IA3 (default: PEFT's per-architecture "
                                                            "choice)", group=GROUP)),
    )

    def lora_kwargs(self, cfg) -> dict:
        """LoraConfig's arguments beyond rank, alpha, dropout and targets (the variants' switches)."""
        return {}

    def peft_config(self, model, cfg):
        import torch
        from peft import LoraConfig, TaskType

        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                            lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
                            **self.lora_kwargs(cfg))
        # PEFT matches custom modules by isinstance, and bitsandbytes' 8-bit and 4-bit layers (quantised here, or
        # in a pre-quantised checkpoint) are nn.Linear subclasses that need PEFT's own LoRA layers: only a model
        # whose linear layers are all plain nn.Linear gets the in-place update.
        if cfg.quantization is None and all(type(m) is torch.nn.Linear for m in model.modules()
                                            if isinstance(m, torch.nn.Linear)):
            config._register_custom_module({torch.nn.Linear: fused_lora_linear()})
        return config

    def targets(self, arch, cfg) -> list[str]:
        return arch.targets(cfg.target_modules or DEFAULT_TARGETS[arch.family], "LoRA")

    def footprint(self, arch, cfg) -> Footprint:
        lin, targets = arch.linears(), self.targets(arch, cfg)
        r = cfg.lora_r
        return Footprint(trainable=arch.layers * sum(r * (lin[t][0] + lin[t][1]) for t in targets),
                         largest=max(r * max(lin[t][0], lin[t][1]) for t in targets),
                         adapters={t: lora_kept(r, cfg.lora_dropout) for t in targets})


def lora_kept(r: int, dropout: float):
    """Per token, what a LoRA layer keeps for the backward. PEFT casts the input to the fp32 adapter dtype (a new
    tensor unless it is fp32 already), applies dropout (a new fp32 tensor, kept by lora_A for its weight gradient;
    the fp32 dropout mask is kept too when the input needs a gradient), then lora_B keeps lora_A's r-wide output."""
    def kept(in_f, out_f, act, input_rg):
        if dropout > 0:
            return 4 * in_f + (4 * in_f if input_rg else 0) + 4 * r, False
        if act != 4:
            return 4 * in_f + 4 * r, False  # the fp32 copy of the input, kept by lora_A
        return 4 * r, True  # lora_A keeps the very input tensor

    return kept


_FUSED = None


def fused_lora_linear():
    """PEFT's LoRA Linear layer, with the low-rank update added into the base layer's output in place.

    PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: three [tokens x out] tensors (the update, its scaled
    copy, the sum) and a multiply each way, even when scaling is 1. Here the update is one `addmm_` into the
    base output (the same sum, to rounding; the base output is not needed by the backward, so it may be
    written in place). Measured on this machine, 4 x 256 tokens, 512 -> 1536, r 8, forward and
    backward: 12.6-15.2 ms PEFT's, 9.9-13.6 ms this. Registered through PEFT's custom-module API (LoraConfig.
    _register_custom_module), so adapters are PEFT's own: saved, loaded and merged by PEFT as usual. Anything
    but the plain case (dropout, several or disabled adapters, merged, variants such as DoRA, a LoRA bias, a
    base layer that is not a plain nn.Linear, mixed dtypes, extra arguments) runs PEFT's forward unchanged."""
    global _FUSED
    if _FUSED is not None:
        return _FUSED
    import torch
    from peft.tuners.lora.layer import Linear

    class FusedLoraLinear(Linear):
        def forward(self, x, *args, **kwargs):
            active = self.active_adapters
            name = active[0] if len(active) == 1 else None
            base = self.get_base_layer()
            if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
                    or name in self.lora_variant or type(base) is not torch.nn.Linear
                    or type(self.lora_dropout[name]) is not torch.nn.Identity or self.lora_B[name].bias is not None
                    or not (x.dtype == base.weight.dtype == self.lora_A[name].weight.dtype)):
                return super().forward(x, *args, **kwargs)
            flat = x.reshape(-1, x.shape[-1])
            out = base(flat)
            out.addmm_(self.lora_A[name](flat), self.lora_B[name].weight.t(), alpha=self.scaling[name])
            return out.view(*x.shape[:-1], out.shape[-1])

    _FUSED = FusedLoraLinear
    return _FUSED


METHODS = (LoRA(),)
