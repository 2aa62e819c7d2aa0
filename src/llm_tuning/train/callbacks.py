"""The Trainer callbacks a run adds: its log file, the startup clock, checkpoint markers, the non-finite guard,
one progress bar, and the stop for a resumed run with nothing left to train.

Under N processes every process runs them; only rank 0 (`state.is_world_process_zero`) writes the log and the
markers and shows the bar. The guard runs on all: the loss it reads is the mean over processes, and the
weights are the same on each, so every process stops at the same step."""

from __future__ import annotations

import json
import math
import os

from transformers import TrainerCallback

from ..log import is_quiet
from ..memory.process import seconds_since_process_start
from .processes import barrier
from .rundir import mark_complete


class NothingLeftToTrain(Exception):
    pass


class RunLog(TrainerCallback):
    """Appends each log entry (loss per step, eval loss) to log.jsonl as it happens (a killed run keeps it), with
    the seconds since the process started (`time_s`): with the tokens seen, the steady-state speed."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "log.jsonl")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs, "time_s": seconds_since_process_start()}) + "\n")


class StartupClock(TrainerCallback):
    """Seconds from process start to the first training step: what a user waits before anything trains."""

    seconds = None

    def on_step_begin(self, args, state, control, **kw):
        if self.seconds is None:
            self.seconds = seconds_since_process_start()


class NothingLeft(TrainerCallback):
    """A run resumed from its last checkpoint has no step left, but transformers' loop only checks max_steps
    after a step, so it would train one more: stop before it (the checkpoint is loaded by then)."""

    def on_step_begin(self, args, state, control, **kw):
        if 0 < state.max_steps <= state.global_step:
            raise NothingLeftToTrain


class MarkComplete(TrainerCallback):
    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    # on_save runs after the Trainer has written model, optimiser, scheduler, RNG and state (rank 0 writes all
    # but the other processes' RNG states, rng_state_<rank>.pth, which each writes itself): the barrier waits
    # for every process's share before the checkpoint is marked complete.
    def on_save(self, args, state, control, **kw):
        barrier()
        if state.is_world_process_zero:
            mark_complete(self.output_dir, state.global_step)


class StopOnNonFinite(TrainerCallback):
    """A NaN/inf loss, or trainable weights gone non-finite, stop training before anything is saved from the
    poisoned state.

    The weights are checked before a step is saved or evaluated and after the last one (then nothing is written).
    Not after every step: weights gone bad make the next logged loss NaN, which stops training anyway, and the
    check cost full fine-tuning of a 47M model 0.13 s a step (an isfinite pass over every weight)."""

    bad = None
    checked = None  # the step whose weights were last checked

    def _stop(self, control, step, what):
        if self.bad is None:
            self.bad = (step, what)
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False

    def _check_weights(self, control, step, model):
        import torch

        self.checked = step
        if model is not None and not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
            self._stop(control, step, "the trainable weights are no longer finite")

    def on_step_end(self, args, state, control, model=None, **kw):
        if control.should_save or control.should_evaluate:  # set by the Trainer's flow callback, which runs first
            self._check_weights(control, state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        # the last step was checked already when it was saved (the Trainer saves at the end): not twice
        if self.bad is None and self.checked != state.global_step:
            self._check_weights(control, state.global_step, model)

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self._stop(control, state.global_step, f"the loss is {loss}")


class Progress(TrainerCallback):
    """One progress bar with the latest loss, instead of the Trainer's printout of every log dict."""

    bar = None
    shown: dict = {}  # the latest figure of each kind, side by side (replaced, never changed in place)

    def on_train_begin(self, args, state, control, **kw):
        from tqdm.auto import tqdm

        if not state.is_world_process_zero or is_quiet():
            return
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                        dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    SHOWN = {"loss": "loss", "eval_loss": "held-out"}  # the held-out loss as the run's last line measures it

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs:
            latest = {name: f"{logs[k]:.4f}" for k, name in self.SHOWN.items() if isinstance(logs.get(k), float)}
            if latest:
                self.shown = {**self.shown, **latest}
                self.bar.set_postfix(self.shown, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def on_train_end(self, args, state, control, **kw):
        self.close()


def make_callbacks(output_dir: str) -> dict:
    return {"log": RunLog(output_dir), "clock": StartupClock(), "complete": MarkComplete(output_dir),
            "stop": StopOnNonFinite(), "progress": Progress(), "nothing_left": NothingLeft()}
