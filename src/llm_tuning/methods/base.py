"""What a method is: every fact about it, declared in its own file, and the small interface it implements.

A method file defines a Method subclass and methods/__init__.py registers an instance of it. The rest of the
project asks the object, never the name:
- `options`: the method's own options (fields made with options.option); TrainConfig is assembled with them, so
  the command line, the YAML checks and docs/options.md follow;
- `trains`, `mergeable`, `default_lr` with `lr_reason`, `color`: the docs' method table, `merge`, the plots;
- `in_base_dtype`: it trains the base's own tensors (full, BitFit), not fp32 adapter weights beside them;
- `trains_on_quantized`, `shardable`, `fast_loss`, `packing`: what training may do with it;
- `enable_checkpointing`, `save_checkpoint` / `load_checkpoint`: where its checkpointing or checkpoints differ;
- `footprint(arch, cfg)`: the memory estimate's terms (what trains, the adapter's activations, the optimiser);
- `variants`: the named variants a comparison or the defaults test runs.

apply(model, cfg)      -> the model to train (trainable parameters set)
save(model, dir)       -> write the adapter (or the model, for full fine-tuning)
load(base, dir)        -> the trained model for inference, from a fresh base
merge(model)           -> a plain transformers model with the adapter folded in (mergeable methods only;
                          check_mergeable() says why not, before anything is loaded)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from ..errors import UserError


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What the memory estimate needs to know of a method on one architecture (memory/)."""

    trainable: int  # trainable parameters (closed form, equal to the real model's count)
    largest: int  # elements of the largest trainable tensor (AdamW's per-tensor step makes temporaries of it)
    added: int = 0  # elements of new tensors in the base's dtype (BitFit's zero biases)
    buffers: int = 0  # bytes of frozen adapter tensors (VeRA's shared random projections)
    in_layers: bool = True  # trainable tensors inside the decoder layers (their gradients appear layer by layer)
    linear_weights: bool = False  # every weight trains: the linears, the embeddings, the output layer (full)
    linear_outputs: bool = False  # every linear's output depends on a trainable tensor (full, BitFit)
    norm_weights: bool = False  # the norms' weights train
    norm_biases: bool = False  # the norms' biases train (Bloom's LayerNorms)
    embedding_norm: bool = False  # Bloom's embedding LayerNorm trains
    input_tokens: int = 0  # virtual tokens added to every sequence (prompt tuning, P-tuning)
    prefix_tokens: int = 0  # key/value positions added to every layer's attention (prefix tuning)
    layer_constant: int = 0  # bytes each decoder layer keeps for the backward whatever the tokens (OFT's rotations)
    weight_copies: int = 0  # bytes per layer of fp32 weight copies kept over a half-precision base (DoRA's dropout)
    # decoder linear name -> kept(in_f, out_f, act_bytes, input_rg) -> (bytes per token, keeps the input itself)
    adapters: dict[str, Callable] = dataclasses.field(default_factory=dict)


# How far from a method's default a learning rate can sensibly be, either way: a comparison's automatic sweep
# reaches the default x 3 and extends x3 at most twice past its edge, 27x (config/commands.py: lr_factors, lr_extend).
LR_FAR = 30


class Method:
    name = ""
    trains = ""  # what it trains, in a few words (the docs' method table)
    mergeable = False
    default_lr = 1e-4
    lr_reason = ""  # why that rate (docs/methods.md)
    color = "#7f7f7f"  # the plots' hue for this method's runs
    in_base_dtype = False  # trains the base's own tensors (full, BitFit): they stay in the chosen precision
    trains_on_quantized = True  # False where the method updates the base's own (then integer) weights
    shardable = True  # False where its save needs whole tensors on one process (FSDP / ZeRO-3 shard them)
    fast_loss = True  # train/fastloss.py's fused output layer + loss applies
    packing = True  # examples of a micro-batch may share one row (position ids restart per example)
    saves_model = False  # its output folder is a whole model, not an adapter
    options: tuple = ()  # (name, type, options.option(...)) of the options it owns
    variants: dict = {}  # variant name -> options (default: the method alone, under its own name)
    # Why the method cannot be merged, and how to serve it instead (shown by `merge`).
    not_mergeable_reason = ""

    def named_variants(self) -> dict:
        return self.variants or {self.name: {}}

    def apply(self, model, cfg):
        raise NotImplementedError

    def lr_warning(self, lr: float) -> str | None:
        """A line for a learning rate further than LR_FAR times from the method's default either way (likely a
        typo: 3e4 for 3e-4), else None."""
        ratio = lr / self.default_lr
        if 1 / LR_FAR <= ratio <= LR_FAR:
            return None
        times = f"{ratio:.3g} times" if ratio > 1 else f"1/{1 / ratio:.3g} of"
        return (f"--lr {lr:g} is {times} {self.name}'s default {self.default_lr:g}, far outside what a comparison "
                f"sweeps (docs/methods.md says why that rate); a typo?")

    def describe(self, cfg) -> str:
        """The method's settings beyond its name, for the estimate's header ('' when none matter)."""
        return ""

    def footprint(self, arch, cfg) -> Footprint:
        raise NotImplementedError

    def prepare(self, model, cfg):
        """The model to train: the method applied (with gradient checkpointing where cfg asks for it); adapter
        weights in fp32 over a half-precision base (full and BitFit train the base's own tensors, which stay in
        the chosen precision)."""
        if cfg.gradient_checkpointing:
            model = self.enable_checkpointing(model, lambda m: self.apply(m, cfg), cfg.checkpoint_every)
        else:
            model = self.apply(model, cfg)
        if cfg.precision != "fp32" and not self.in_base_dtype:
            import torch

            for p in model.parameters():
                if p.requires_grad and p.dtype != torch.float32:
                    p.data = p.data.float()
        return model

    def enable_checkpointing(self, model, apply, every: int = 1):
        """Gradient checkpointing (of every `every`-th decoder layer) around `apply(model)`: transformers' own, on
        the base, before the method."""
        from ..models.checkpointing import enable_standard

        return apply(enable_standard(model, every))

    def save(self, model, out_dir: str):
        model.save_pretrained(out_dir)

    def save_checkpoint(self, model, out_dir: str) -> bool:
        """Write what a Trainer checkpoint needs beyond (or, returning True, instead of) the Trainer's own save."""
        return False

    def load_checkpoint(self, model, checkpoint_dir: str) -> bool:
        """Load a checkpoint written with save_checkpoint; False: the Trainer's own load applies."""
        return False

    def load(self, base, adapter_dir: str):
        raise NotImplementedError

    def check_mergeable(self):
        if not self.mergeable:
            raise UserError(
                f"a {self.name} adapter cannot be merged into the base model: {self.not_mergeable_reason} "
                f"Serve it with the adapter instead: llm-tuning generate --model BASE --adapter ADAPTER_DIR"
            )

    def merge(self, model):
        raise NotImplementedError


ENCODER_FILE = "prompt_encoder.safetensors"


class PeftMethod(Method):
    """A method PEFT implements: we build its config; PEFT trains, saves, loads and merges it."""

    peft_type = ""  # PEFT's name for the adapter type (adapter_config.json's peft_type)
    peft_layer = ""  # the module path of PEFT's injected layer class ("peft.tuners.lora.layer.LoraLayer"), if any
    prompt_learning = False  # its adapter adds inputs (virtual tokens, a prefix), no layer

    def peft_config(self, model, cfg):
        raise NotImplementedError

    def apply(self, model, cfg):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, cfg))

    def load(self, base, adapter_dir: str):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, adapter_dir)

    def merge(self, model):
        self.check_mergeable()
        return model.merge_and_unload()

    # P-tuning's MLP / LSTM and prefix tuning's projection: PEFT saves a prompt-learning adapter as the encoder's
    # *output* (what inference needs), and the Trainer resumes a PEFT model by loading that file back. With an
    # encoder in between that is wrong (prefix projection: a size mismatch; P-tuning: loaded silently into the
    # embedding, the encoder then applied twice), so each checkpoint also holds the whole encoder.
    def save_checkpoint(self, model, out_dir: str) -> bool:
        enc = _encoder(model)
        if enc is not None:
            from safetensors.torch import save_file

            os.makedirs(out_dir, exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()},
                      os.path.join(out_dir, ENCODER_FILE))
        return False  # the Trainer's own save runs too

    def load_checkpoint(self, model, checkpoint_dir: str) -> bool:
        enc, path = _encoder(model), os.path.join(checkpoint_dir, ENCODER_FILE)
        if enc is None or not os.path.exists(path):
            return False
        from safetensors.torch import load_file

        enc.load_state_dict(load_file(path, device=str(next(enc.parameters()).device)), strict=True)
        return True


def _encoder(model):
    """The active prompt encoder when it has weights beyond its input embedding, else None."""
    encoders = getattr(model, "prompt_encoder", None)
    if not encoders:
        return None
    enc = encoders[model.active_adapter]
    extra = [n for n, _ in enc.named_parameters() if not n.startswith("embedding.")]
    return enc if extra else None


def hidden_size(model) -> int:
    return model.config.hidden_size


def encoder_hidden_size(model, cfg) -> int:
    return cfg.encoder_hidden_size or hidden_size(model)


def init_token_ids(tokenizer, text: str, n: int) -> list[int]:
    """`n` token ids to start virtual tokens (or prefix keys/values) from: `text`'s, repeated to length.

    A text the tokenizer cannot spell (half or more of its tokens unknown or byte-fallback pieces: the default
    Chinese text on an English 512-token vocabulary) starts the model on junk context: stories260K's held-out loss
    4.10 -> 4.59 before any training. Such a text gives way to the beginning-of-text token, which the model sees
    at the start of every text (4.10 -> 4.10); no bos token: the text as it is."""
    ids = tokenizer(text or "", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    foreign = sum(i == tokenizer.unk_token_id or (p.startswith("<0x") and p.endswith(">")) for i, p in zip(ids, pieces))
    if (not ids or 2 * foreign >= len(ids)) and tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id] * n
    ids = ids or [tokenizer.eos_token_id]
    return (ids * (n // len(ids) + 1))[:n]
