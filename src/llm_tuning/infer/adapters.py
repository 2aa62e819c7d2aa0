"""Many adapters over one base model in memory: each a model name, `base` the untouched model.

PEFT 0.21 holds several adapters of ONE type in a PeftModel (load_adapter + set_adapter) and refuses to add
an adapter of another type ("Cannot combine adapters with different peft types"); its mixed model takes LoRA
but not IA3 or the prompt-learning methods. So adapters are grouped by PEFT type, one PeftModel per type,
every one over the same base module:
- LoRA and IA3 inject layers into the base's linear layers. The IA3 group's layers wrap the LoRA group's where
  both target a module. Before each generation `activate` switches every injected layer itself: on, with the
  requested adapter, in the requested group, off everywhere else (PEFT's own enable/disable_adapter_layers walk
  every tuner layer of the model, so they would switch the other group too).
- Prompt tuning, P-tuning and prefix tuning add no layer to the base: their PeftModels wrap the base and hold
  only their virtual tokens / prefixes; running one is running its PeftModel with the injected layers off.
- BitFit changes the base's own biases and a full fine-tune is a whole model: each is loaded as a separate
  model beside the shared base (its own memory; the startup log says so).
Switching is global state of the shared base, which is why the server runs one generation at a time.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from ..errors import UserError

BASE = "base"


@dataclass
class Served:
    name: str
    method: str  # "base" for the untouched model
    template: str
    model: object  # what generation runs on
    group: str | None  # the injected group (PEFT type: "LORA", "IA3", ...) it lives in; None: injected layers all off
    adapter_name: str | None  # PEFT's name for it inside its group


def parse_adapter_specs(specs: list[str] | None) -> list[tuple[str, str]]:
    """["name=dir", ...] -> [(name, dir)]; a UserError naming the bad entry otherwise."""
    out, seen = [], {BASE}
    for spec in specs or []:
        name, sep, folder = spec.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder:
            raise UserError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter lora=runs/lora")
        if name in seen:
            raise UserError(f"--adapter {spec!r}: the model name {name!r} is taken"
                            + (" (it is the base model's)" if name == BASE else ""))
        if not os.path.isdir(folder):
            raise UserError(f"--adapter {spec!r}: {folder} is not a folder")
        seen.add(name)
        out.append((name, folder))
    return out


class AdapterSet:
    """The served models by name. `activate(name)` before generating with `get(name).model`."""

    def __init__(self, model_path: str, specs: list[str] | None, precision: str = "fp32",
                 quantization: str | None = None, template: str | None = None, trust_remote_code: bool = False,
                 log=print):
        from ..data.tokenize import prepare_tokenizer
        from ..methods import METHODS, method_of_adapter
        from ..models.load import load_model, load_tokenizer
        from .compat import check_adapter
        from .load import run_info

        pairs = parse_adapter_specs(specs)
        methods = {name: method_of_adapter(folder) for name, folder in pairs}  # bad folders fail before loading
        for name, folder in pairs:  # and adapters of another base's shape (a whole model needs no base)
            if not METHODS[methods[name]].saves_model:
                check_adapter(folder, model_path, trust_remote_code)
        self.base = load_model(model_path, precision, trust_remote_code, quantization)
        self.base.eval()
        self.tokenizer = prepare_tokenizer(load_tokenizer(model_path, trust_remote_code), log=lambda m: None)
        self.models = {BASE: Served(BASE, BASE, template or "default", self.base, None, None)}
        self.groups: dict[str, object] = {}  # PEFT type -> its PeftModel over self.base
        # Injected types in the registry's order (LoRA before IA3: IA3 layers wrap LoRA layers, never the reverse),
        # then prompt learning, then the methods that change the base's own weights.
        def order(pair):
            m = METHODS[methods[pair[0]]]
            return (0 if getattr(m, "peft_layer", "") else 1 if getattr(m, "prompt_learning", False) else 2,
                    list(METHODS).index(m.name))

        for i, (name, folder) in enumerate(sorted(pairs, key=order)):
            method = methods[name]
            tmpl = template or run_info(folder).get("template") or "default"
            try:
                with warnings.catch_warnings():
                    # PEFT warns when a second tuner type goes on the same base: that is the design here.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    self.models[name] = self._load(name, folder, method, tmpl, f"adapter_{i}", model_path,
                                                   precision, quantization, trust_remote_code, log)
            except (ValueError, RuntimeError, KeyError) as e:
                raise UserError(f"--adapter {name}={folder}: cannot be put on {model_path} "
                                f"({str(e).splitlines()[0][:200]}); was it trained on another base model?") from None
        self._layers = self._injected_layers()
        self.names = [BASE] + [n for n, _ in pairs]
        self.activate(BASE)

    def _load(self, name, folder, method, template, peft_name, model_path, precision, quantization, trc, log):
        from ..methods import METHODS

        m = METHODS[method]
        injected = getattr(m, "peft_layer", "")
        if injected or getattr(m, "prompt_learning", False):
            group = self.groups.get(m.peft_type)
            if group is None:
                from peft import PeftModel

                group = self.groups[m.peft_type] = PeftModel.from_pretrained(self.base, folder, adapter_name=peft_name)
            else:
                group.load_adapter(folder, adapter_name=peft_name)
            group.eval()
            return Served(name, method, template, group, m.peft_type if injected else None, peft_name)
        from .load import load_for_inference

        log(f"{name}: a {method} adapter changes the base's own weights; loaded as a separate model (its own "
            "memory)")
        model, _, _ = load_for_inference(model_path, folder, precision, trc, quantization)
        return Served(name, method, template, model, None, None)

    def _injected_layers(self):
        """PEFT type -> its tuner layers in the base (each method names its layer class: Method.peft_layer)."""
        import importlib

        from ..methods import METHODS

        kinds = {}
        for m in METHODS.values():
            if getattr(m, "peft_layer", "") and m.peft_type in self.groups:
                module, cls = m.peft_layer.rsplit(".", 1)
                kinds[m.peft_type] = getattr(importlib.import_module(module), cls)
        return {g: [m for m in self.base.modules() if isinstance(m, cls)] for g, cls in kinds.items()}

    def get(self, name: str) -> Served | None:
        return self.models.get(name)

    def activate(self, name: str) -> Served:
        """Switch the shared base to model `name`: its injected adapter on, every other injected layer off."""
        served = self.models[name]
        for group, layers in self._layers.items():
            on = group == served.group
            for layer in layers:
                layer.enable_adapters(on)
                if on:
                    layer.set_adapter(served.adapter_name)
        if served.model is not self.base and served.group is None and served.adapter_name is not None:
            served.model.set_adapter(served.adapter_name)  # a prompt-learning adapter in its PeftModel
        return served
