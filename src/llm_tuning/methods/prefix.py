from ..options import option
from .base import Footprint, PeftMethod, encoder_hidden_size, init_token_ids
from .prompt import GROUP


class PrefixTuning(PeftMethod):
    """Trainable key/value prefixes for every attention layer (optionally through a projection MLP).

    Without projection, PEFT starts the prefixes at N(0, 1): keys and values far outside what
    the model's layers produce, which on small models wrecks the loss before training starts
    (stories260K: 3.9 -> 6.5) and recovers slowly. As the prefix-tuning paper recommends, we
    start them instead from the model's own keys and values on real tokens (`prompt_text`).

    Those keys and values are on very different scales (stories260K: keys' element std 3-7 per layer, values'
    0.4-0.7), and Adam moves every element by about the learning rate per step whatever its scale: at 1e-2 the keys
    hardly moved in 60 steps and held-out loss ended above the base model's. The prefix is therefore trained as
    `scale * weight` with `scale` each layer's key (or value) spread at the start (ScaledPrefix): a step moves each
    by a share of its own spread. With projection the prefix is the output of PEFT's MLP, left as PEFT builds it.
    One learning rate, 3e-2, suits both (stories260K, 60 steps: 1e-1 makes the projection diverge).
    """

    name = "prefix"
    trains = "every layer's key/value prefix"
    not_mergeable_reason = "its prefixes are extra attention keys and values, not a change to any weight."
    default_lr = 3e-2
    lr_reason = ("trained in units of each layer's own key/value spread: 3e-2 suits both variants (1e-1 made the "
                 "projection diverge)")
    color = "#d62728"
    peft_type = "PREFIX_TUNING"
    prompt_learning = True  # its adapter adds inputs (virtual tokens, a prefix), no layer
    packing = False  # its virtual tokens go once in front of each row: in a packed row only the first example sees them
    options = (("prefix_projection", bool, option(False, "prefix tuning: the prefix through a two-layer MLP",
                                                  group=GROUP)),)
    variants = {"prefix": {"prefix_projection": False}, "prefix-proj": {"prefix_projection": True}}

    def describe(self, cfg) -> str:
        return "prefix projection" if cfg.prefix_projection else ""

    def footprint(self, arch, cfg) -> Footprint:
        n, kv, h = cfg.num_virtual_tokens, arch.kv_dim, arch.hidden
        width = arch.layers * 2 * kv  # per virtual token: a key and a value for every layer
        if cfg.prefix_projection:
            e = cfg.encoder_hidden_size or h
            trainable, largest = n * kv + (kv * e + e) + (e * width + width), e * width
        else:
            trainable = largest = n * width
        return Footprint(trainable=trainable, largest=largest, in_layers=False, prefix_tokens=n)

    def enable_checkpointing(self, model, apply, every: int = 1):
        """transformers' checkpointing drops the KV cache PEFT feeds the prefix through (models/checkpointing.py):
        our per-layer checkpointing keeping the cache, on the PEFT model."""
        from ..models.checkpointing import enable_keeping_prefix

        return enable_keeping_prefix(apply(model), every)

    def peft_config(self, model, cfg):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                  prefix_projection=cfg.prefix_projection,
                                  encoder_hidden_size=encoder_hidden_size(model, cfg))

    def apply(self, model, cfg):
        from peft import get_peft_model

        init = None if cfg.prefix_projection else _real_token_key_values(model, cfg)
        peft_model = get_peft_model(model, self.peft_config(model, cfg))
        encoder = peft_model.prompt_encoder[peft_model.active_adapter]
        if init is not None and encoder.embedding.weight.shape == init.shape:
            encoder.embedding = scaled_prefix_class()(init, _spread(init, 2 * model.config.num_hidden_layers))
        return peft_model


def _spread(kv, groups: int):
    """Per column of `kv` (tokens, groups*width): the element std of its group (one layer's keys or values)."""
    n, width = kv.shape
    if groups < 1 or width % groups:
        groups = 1
    std = kv.reshape(n, groups, -1).std(dim=(0, 2)).clamp_min(1e-3)  # (groups,)
    return std.repeat_interleave(width // groups)


_SCALED = None


def scaled_prefix_class():
    global _SCALED
    if _SCALED is not None:
        return _SCALED
    import torch

    class ScaledPrefix(torch.nn.Embedding):
        """The prefix keys/values as `scale * weight`, `weight` starting at init / scale: the same values, but an
        optimiser step moves each layer's keys and values by a share of their own spread, not by a fixed amount.
        PEFT saves the forward's output (the plain prefix), so the adapter is a standard one; a checkpoint loaded
        back (--resume) is divided by the scale again."""

        def __init__(self, init, scale):
            super().__init__(init.shape[0], init.shape[1], device=init.device)
            self.register_buffer("scale", scale.float().to(init.device), persistent=False)
            with torch.no_grad():
                self.weight.copy_(init / self.scale)

        def forward(self, ids):
            return super().forward(ids) * self.scale

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            key = prefix + "weight"
            if key in state_dict:  # the plain prefix, as saved
                state_dict = {**state_dict, key: state_dict[key].to(self.scale.device).float() / self.scale}
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    _SCALED = ScaledPrefix
    return _SCALED


def _real_token_key_values(model, cfg):
    """(num_virtual_tokens, layers*2*kv_width) in PEFT's layout: per token, for each layer its key then its value."""
    import torch

    from ..models import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    n = cfg.num_virtual_tokens
    ids = init_token_ids(tok, cfg.prompt_text, n)
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([ids], device=device), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    rows = []
    for layer in layers:
        k, v = layer.keys, layer.values  # (1, kv_heads, n, head_dim)
        if k is None or k.dim() != 4:
            return None
        rows += [k[0].transpose(0, 1), v[0].transpose(0, 1)]  # (n, kv_heads, head_dim) each
    return torch.stack(rows, dim=1).reshape(n, -1).float()


METHODS = (PrefixTuning(),)
