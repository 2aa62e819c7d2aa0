"""What a checkpoint holds of the model where the Trainer's own save is wrong or wasteful.

- P-tuning's MLP / LSTM and prefix tuning's projection: PEFT saves a prompt-learning adapter as the encoder's
  *output* (`prompt_embeddings`, what inference needs), and the Trainer resumes a PEFT model by loading that
  file back. With an encoder in between that is wrong: prefix projection's output [virtual tokens x
  layers*2*hidden] does not fit its input embedding (a size-mismatch error), and P-tuning's output has the
  input's shape, so it loaded silently and the resumed run started from another prompt, the encoder applied
  twice. Each checkpoint also holds the whole encoder (`prompt_encoder.safetensors`); a resume loads that.
- BitFit: the model is a plain transformers model, so the Trainer saved all of it at every checkpoint (4.9 GB
  at Bloom-1b4 for 0.5M trained biases). Its checkpoints hold the BitFit adapter instead (bitfit.safetensors and
  bitfit_config.json, the format of the final one), and a resume loads the biases back into the base."""

from __future__ import annotations

import os

ENCODER_FILE = "prompt_encoder.safetensors"


def _encoder(model):
    """The active prompt encoder when it has weights beyond its input embedding, else None."""
    encoders = getattr(model, "prompt_encoder", None)
    if not encoders:
        return None
    enc = encoders[model.active_adapter]
    extra = [n for n, _ in enc.named_parameters() if not n.startswith("embedding.")]
    return enc if extra else None


def with_method_checkpoints(trainer_cls):
    from safetensors.torch import load_file, save_file

    from ..errors import UserError
    from ..methods.bitfit import WEIGHTS, BitFit

    class MethodCheckpointTrainer(trainer_cls):
        def _save(self, output_dir=None, state_dict=None):
            out = output_dir or self.args.output_dir
            model = self.accelerator.unwrap_model(self.model)
            if getattr(model, "_bitfit_info", None) is not None:
                if self.args.should_save:
                    BitFit().save(model, out)
                    if self.processing_class is not None:
                        self.processing_class.save_pretrained(out)
                return
            super()._save(output_dir, state_dict)
            enc = _encoder(model)
            if enc is not None and self.args.should_save:
                save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()},
                          os.path.join(out, ENCODER_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model or self.model
            enc = _encoder(model)
            biases = os.path.join(resume_from_checkpoint, WEIGHTS)
            encoder = os.path.join(resume_from_checkpoint, ENCODER_FILE)
            if getattr(model, "_bitfit_info", None) is not None and os.path.exists(biases):
                device = str(next(model.parameters()).device)
                unknown = model.load_state_dict(load_file(biases, device=device), strict=False).unexpected_keys
                if unknown:
                    raise UserError(f"{biases}: bias {unknown[0]!r} does not exist in --model; wrong base model?")
            elif enc is not None and os.path.exists(encoder):
                enc.load_state_dict(load_file(encoder, device=str(next(enc.parameters()).device)), strict=True)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    return MethodCheckpointTrainer
