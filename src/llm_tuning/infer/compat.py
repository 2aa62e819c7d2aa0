"""An adapter checked against the base it is put on, before anything is loaded.

PEFT loads an adapter onto a base of another shape either with a size-mismatch traceback or, where the tensor
names happen to exist, silently (an adapter of a 5-layer model put on a 2-layer one answered in garbage). So:
- our adapters record the base's shape facts when they are saved (llm_tuning.json's base_shape: architecture,
  layers, hidden size, vocabulary; models/facts.py) and these are compared with the base's config.json;
- a plain PEFT adapter (or one of ours saved before that record) is checked from what its folder holds without
  loading a tensor: adapter_config.json (a prompt-learning adapter's layer count and width) and the shapes in the
  safetensors header, against the base's modules built on the meta device (no memory).
A difference of shape is one line naming the adapter, the base and the fact (a UserError: exit 2). A base of
another name but the same shapes loads, with a one-line warning."""

from __future__ import annotations

import json
import os
import re
import sys

from ..errors import UserError
from ..models.facts import FACTS, read_shape_facts

_warned: set = set()  # (adapter, base) pairs already warned about in this process
# adapter tensor name ending -> (its dimension, the base module's attribute that dimension must equal, the fact)
_SHAPE_RULES = ((".lora_A.weight", 1, "in_features"), (".lora_B.weight", 0, "out_features"),
                (".lora_embedding_A", 1, "num_embeddings"), (".lora_embedding_B", 0, "embedding_dim"))
_LAYER = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


def _warn(message: str) -> None:
    print(f"llm-tuning: warning: {message}", file=sys.stderr, flush=True)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _same_model(a: str, b: str) -> bool:
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b))


def check_adapter(adapter: str, model: str, trust_remote_code: bool = False) -> None:
    """A UserError when the adapter in folder `adapter` cannot fit the base `model`; a warning when it was trained
    on a base of another name with the same shapes."""
    from ..methods import RUN_INFO

    base = read_shape_facts(model, trust_remote_code)
    if base is None:
        return  # the base's own load says what is wrong with it
    ours = _read_json(os.path.join(adapter, RUN_INFO))
    peft = _read_json(os.path.join(adapter, "adapter_config.json"))
    trained_on = ours.get("base_model") or peft.get("base_model_name_or_path")
    if ours.get("base_shape"):
        recorded = ours["base_shape"]
        differ = [_versus(FACTS[k], recorded[k], base[k]) for k in FACTS
                  if recorded.get(k) is not None and base.get(k) is not None and recorded[k] != base[k]]
    else:
        differ = _peft_differences(adapter, peft, base, model, trust_remote_code)
    if differ:
        was = f"it was trained on {trained_on}: " if trained_on and not _same_model(trained_on, model) else ""
        raise UserError(f"adapter {adapter} does not fit the base {model}: {', '.join(differ)}; {was}load it onto "
                        "the base it was trained on")
    if trained_on and not _same_model(trained_on, model) and (adapter, model) not in _warned:
        _warned.add((adapter, model))
        _warn(f"adapter {adapter} was trained on {trained_on}, not {model}; their shapes agree, so it is loaded")


def _versus(fact: str, adapter_value, base_value) -> str:
    return f"{fact} {adapter_value} (adapter) vs {base_value} (base)"


def _peft_differences(adapter: str, peft: dict, base: dict, model: str, trust_remote_code: bool) -> list[str]:
    """The facts in which a PEFT adapter folder disagrees with the base's, from its config and tensor shapes."""
    differ = []
    layers = peft.get("num_layers")  # prompt learning: PEFT records the layer count and the width it was made for
    if layers and base["num_hidden_layers"] and layers != base["num_hidden_layers"]:
        differ.append(_versus("layers", layers, base["num_hidden_layers"]))
    if peft.get("peft_type") in ("PROMPT_TUNING", "P_TUNING") and peft.get("token_dim") not in (None, base["hidden_size"]):
        differ.append(_versus("hidden size", peft["token_dim"], base["hidden_size"]))
    shapes = _tensor_shapes(os.path.join(adapter, "adapter_model.safetensors"))
    return differ or _module_differences(shapes, base, model, trust_remote_code)


def _tensor_shapes(path: str) -> dict:
    """{tensor name: shape} from a safetensors file's header (no tensor is read)."""
    if not os.path.isfile(path):
        return {}
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def _module_differences(shapes: dict, base: dict, model: str, trust_remote_code: bool) -> list[str]:
    """Each LoRA tensor's dimensions against the module it adapts in the base, built on the meta device."""
    ruled = {k: rule for k in shapes for rule in _SHAPE_RULES if k.endswith(rule[0])}
    if not ruled:
        return []
    meta = _meta_model(model, trust_remote_code)
    if meta is None:
        return []
    for key, (suffix, dim, attr) in ruled.items():
        name = key[: -len(suffix)].removeprefix("base_model.model.")
        try:
            module = meta.get_submodule(name)
        except AttributeError:
            layer = _LAYER.search(f".{name}.")
            if layer and base["num_hidden_layers"] and int(layer.group(1)) >= base["num_hidden_layers"]:
                return [f"layers: the adapter has weights for layer {layer.group(1)} (from 0), the base has "
                        f"{base['num_hidden_layers']} layers"]
            return [f"the base has no module {name} (another architecture than {base['model_type']}?)"]
        want = getattr(module, attr, None)
        if want is not None and shapes[key][dim] != want:
            return [_versus(f"{name}'s {attr.replace('_', ' ')}", shapes[key][dim], want)]
    return []


def _meta_model(model: str, trust_remote_code: bool):
    """The base's modules without weights (torch's meta device); None where its class cannot be built."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.load import resolve_source

    try:
        config = AutoConfig.from_pretrained(resolve_source(model), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
