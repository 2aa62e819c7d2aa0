"""The one Trainer: transformers' loop, with the behaviours this project adds switched on by the config and the
method (imported only once the input is known to be good: it imports transformers).

- length grouping (data/sampling.py) in place of transformers' (less padding, batches in random order);
- the fused output layer + loss (fastloss.py) when the config and the method allow it, also under DDP;
- its evaluations during training measure the held-out loss as the run's final figure does (`evaluate`);
- checkpoints that hold what the method needs (Method.save_checkpoint / load_checkpoint: BitFit's biases instead
  of the whole model, prompt encoders beside PEFT's saved output).
"""

from __future__ import annotations

import time

from transformers import Trainer

from .fastloss import backbone_and_head, response_loss_sum


class LLMTrainer(Trainer):
    def __init__(self, *args, method, fused_loss: bool, linear_ce=None, heldout_loss=None, **kwargs):
        # linear_ce: the fused output layer + loss (None: fastloss.py's CPU one; Liger's on CUDA, train/kernels.py)
        # heldout_loss: model -> the held-out loss, as the run's final figure (loop.heldout_loss)
        self.method, self.fused_loss, self.linear_ce, self.heldout_loss = method, fused_loss, linear_ce, heldout_loss
        super().__init__(*args, **kwargs)
        if self.fused_loss and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            # the fused loss reads the output layer's weight outside that layer's forward, where FSDP / ZeRO-3 hold
            # only a shard of it: not proven there, so the stock forward and loss (and the Trainer's GA scaling)
            self.fused_loss = False
        # the fused loss divides by the learned tokens of the whole accumulated batch itself
        self.loss_is_scaled_for_ga = True if self.fused_loss else None

    # ------------------------------------------------------------ length grouping

    def _get_train_sampler(self, train_dataset=None):
        """Under N processes every process draws the same order (same seed) and accelerate deals its batches out
        in turn (rank r gets batches r, r + N, ...): grouping by N x the per-process batch makes each step's N
        batches one group, the examples one process with an N times larger batch would take in that step."""
        ds = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in getattr(ds, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        from ..data.sampling import make_sampler

        lengths = [len(x) for x in ds["input_ids"]]
        return make_sampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps
                            * self.args.world_size)

    # ------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inner = self.accelerator.unwrap_model(model)
        if not self.fused_loss or return_outputs or backbone_and_head(inner) is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if inner is not model:
            return self._fused_loss_through_ddp(model, inner, inputs, num_items_in_batch)
        return self._fused_loss(model, inputs, num_items_in_batch)

    def _fused_loss(self, model, inputs, num_items_in_batch):
        total, n = response_loss_sum(model, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"],
                                     inputs.get("position_ids"), self.linear_ce)
        if num_items_in_batch is None:  # not counted by the Trainer: this micro-batch's share of the mean
            num_items_in_batch = n * self.current_gradient_accumulation_steps
        return total / num_items_in_batch

    def _fused_loss_through_ddp(self, model, inner, inputs, num_items_in_batch):
        """DDP all-reduces the gradients of a backward only from the output of its own forward (that forward arms
        its reducer), and the fused loss calls the backbone itself: so it runs inside DDP's forward, the wrapped
        model's forward standing in for it for this one call. No declared override can do this: DDP calls the
        module it wraps. The loss is divided by the learned tokens of the global batch (the Trainer sums them over
        processes), so it is multiplied by N as the Trainer's own loss is: DDP's mean of the gradients is then the
        gradient of the global batch's token mean, as in one process."""
        before = inner.__dict__.get("forward")  # accelerate may have wrapped forward on the instance

        def forward(*_, **__):
            _restore_forward(inner, before)  # prompt methods call the real forward inside
            return self._fused_loss(inner, inputs, num_items_in_batch)

        inner.forward = forward
        try:
            loss = model()
        finally:
            _restore_forward(inner, before)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    # ------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """`eval_loss` as the final held-out figure is measured: every response token of every held-out record
        counts once. The Trainer's own evaluation averages the means of its batches instead (and under N
        processes, of batches that span them), which gives another number for the same weights."""
        if self.heldout_loss is None or eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        start = time.time()
        loss = self.heldout_loss(self.model)
        metrics = {f"{metric_key_prefix}_loss": loss, f"{metric_key_prefix}_runtime": round(time.time() - start, 4)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------ checkpoints

    def _save(self, output_dir=None, state_dict=None):
        out = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and self.method.save_checkpoint(model, out):
            if self.processing_class is not None:
                self.processing_class.save_pretrained(out)
            return
        super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.method.load_checkpoint(model or self.model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


def _restore_forward(module, before):
    if before is None:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = before
