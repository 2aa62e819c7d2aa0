"""BitFit: train only the bias terms.

Llama-family models have no biases at all, so "freeze everything but biases" trains
nothing there. We add zero-initialised biases to the linear layers that lack them
(not the output embedding): the model computes exactly the same function before
training (x·Wᵀ + 0 is bit-identical), and for Llama the result is a standard
transformers model, because its config can switch those biases on
(`attention_bias` for q/k/v/o, `mlp_bias` for gate/up/down).

PEFT has no BitFit, so the adapter format is ours: `bitfit.safetensors` (the bias
tensors) and `bitfit_config.json` (which biases were added, which config switches set).
"""

from __future__ import annotations

import json
import os

from ..errors import UserError
from .base import Footprint, Method

# Per architecture: config switch -> the linear layers it gives a bias.
BIAS_SWITCHES = {
    "llama": {"attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
              "mlp_bias": ("gate_proj", "up_proj", "down_proj")},
}
WEIGHTS = "bitfit.safetensors"
CONFIG = "bitfit_config.json"


def add_zero_biases(model) -> tuple[list[str], dict]:
    """Give bias-free linear layers a zero bias. Returns (module names, config switches set)."""
    import torch
    from torch import nn

    switches = BIAS_SWITCHES.get(model.config.model_type, {})
    wanted = {s for group in switches.values() for s in group}
    out_emb = model.get_output_embeddings()
    added = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or mod.bias is not None or mod is out_emb:
            continue
        if switches and name.rsplit(".", 1)[-1] not in wanted:
            continue
        bias_dtype = mod.weight.dtype if mod.weight.is_floating_point() else torch.float32
        mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=bias_dtype, device=mod.weight.device))
        added.append(name)
    set_switches = {}
    for switch, group in switches.items():
        if any(n.rsplit(".", 1)[-1] in group for n in added):
            setattr(model.config, switch, True)
            set_switches[switch] = True
    return added, set_switches


def _freeze_all_but_biases(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".bias") or name == "bias")


class BitFit(Method):
    name = "bitfit"
    trains = "biases"
    mergeable = True
    trains_on_quantized = False
    in_base_dtype = True
    shardable = False  # its biases are saved from one process, which holds only a shard of them under FSDP/ZeRO-3
    default_lr = 1e-2
    lr_reason = "biases are few and start at 0: they need large steps"
    color = "#ff7f0e"

    def apply(self, model, cfg):
        added, switches = add_zero_biases(model)
        model._bitfit_info = {"added_biases": added, "config_switches": switches,
                              "model_type": model.config.model_type}
        _freeze_all_but_biases(model)
        return model

    def footprint(self, arch, cfg) -> Footprint:
        lin = arch.linears()
        if arch.family == "bloom":  # every bias: 4 linears + 2 LayerNorms per layer, embedding and final LayerNorm
            trainable, added = arch.layers * (sum(o for _, o, _ in lin.values()) + 2 * arch.hidden) + 2 * arch.hidden, 0
        else:  # added or existing biases of every decoder linear
            trainable = arch.layers * sum(o for _, o, _ in lin.values())
            added = arch.layers * sum(o for _, o, b in lin.values() if not b)
        return Footprint(trainable=trainable, largest=max(o for _, o, _ in lin.values()), added=added,
                         linear_outputs=True, norm_biases=True, embedding_norm=True)

    # Its checkpoints hold the biases, not the whole model the Trainer would save (4.9 GB at Bloom-1b4 for 0.5M
    # trained biases): the format of the final adapter; a resume loads them back into the base.
    def save_checkpoint(self, model, out_dir: str) -> bool:
        self.save(model, out_dir)
        return True

    def load_checkpoint(self, model, checkpoint_dir: str) -> bool:
        biases = os.path.join(checkpoint_dir, WEIGHTS)
        if not os.path.exists(biases):
            return False
        from safetensors.torch import load_file

        device = str(next(model.parameters()).device)
        unknown = model.load_state_dict(load_file(biases, device=device), strict=False).unexpected_keys
        if unknown:
            raise UserError(f"{biases}: bias {unknown[0]!r} does not exist in --model; wrong base model?")
        return True

    def save(self, model, out_dir: str):
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        os.makedirs(out_dir, exist_ok=True)
        save_file(tensors, os.path.join(out_dir, WEIGHTS))
        with open(os.path.join(out_dir, CONFIG), "w") as f:
            json.dump(getattr(model, "_bitfit_info", {}), f, indent=2)

    def load(self, base, adapter_dir: str):
        from safetensors.torch import load_file

        with open(os.path.join(adapter_dir, CONFIG)) as f:
            info = json.load(f)
        added, switches = add_zero_biases(base)
        if sorted(added) != sorted(info.get("added_biases", [])):
            raise UserError(f"{adapter_dir}: this BitFit adapter was trained on a different architecture than --model")
        tensors = load_file(os.path.join(adapter_dir, WEIGHTS))
        params = dict(base.named_parameters())
        unknown = [k for k in tensors if k not in params]
        if unknown:
            raise UserError(f"{adapter_dir}: bias {unknown[0]!r} does not exist in --model; wrong base model?")
        import torch

        with torch.no_grad():
            for k, v in tensors.items():
                if params[k].shape != v.shape:
                    raise UserError(f"{adapter_dir}: bias {k!r} has shape {tuple(v.shape)}, model has {tuple(params[k].shape)}")
                params[k].copy_(v.to(params[k].dtype))
        base._bitfit_info = info
        return base

    def merge(self, model):
        info = getattr(model, "_bitfit_info", {})
        if info.get("added_biases") and not info.get("config_switches"):
            raise UserError(
                f"BitFit added biases to a {info.get('model_type')} model, whose config has no switch to load them as a "
                "standard model; serve it with --adapter instead"
            )
        # The biases live in the model already and its config says so: it is a standard model as it stands.
        return model


METHODS = (BitFit(),)
