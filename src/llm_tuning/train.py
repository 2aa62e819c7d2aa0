"""Training, top to bottom: config -> data -> tokenizer -> model -> method -> Trainer -> adapter.

The loop itself is the transformers Trainer. What we add around it:
- input validation before anything heavy is imported or anything is written;
- a checkpoint is only resumable once a COMPLETE marker is written after the Trainer
  finished saving it, so a kill during a save never leaves a half-written checkpoint
  that --resume would load;
- the per-step loss goes to log.jsonl as it happens (a killed run keeps its log);
- the final artefacts are written to a temporary folder and moved into place, the
  run-info file last.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass

from .config import TrainConfig
from .errors import UserError
from .models import quiet_libraries

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainResult:
    output_dir: str
    method: str
    trainable_params: int
    total_params: int
    train_loss: float | None
    eval_loss: float | None
    steps: int
    seconds: float
    log_history: list


def seconds_since_process_start() -> float | None:
    """From /proc (Linux): uptime minus the process's start time. None where unavailable."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_mib() -> float:
    """The process's RSS high-water mark (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss_mib() -> float:
    """Restart the high-water mark at the current RSS, so a later peak measures this phase alone (an import
    spike before the model load would otherwise hide it); returns that RSS. Where the kernel does not allow the
    reset, the high-water mark so far is returned and the difference is a lower bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _peak_rss_mib()


def _log(msg: str):
    print(f"[llm-tuning] {msg}", flush=True)


def complete_checkpoints(output_dir: str) -> list[str]:
    """Checkpoints that were fully written, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT.match(name)
        if m and os.path.exists(os.path.join(output_dir, name, COMPLETE)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return [p for _, p in sorted(found)]


def _drop_incomplete_checkpoints(output_dir: str):
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if _CKPT.match(name) and not os.path.exists(os.path.join(path, COMPLETE)):
            _log(f"removing {path}: its save never finished")
            shutil.rmtree(path, ignore_errors=True)


def _prepare_output_dir(cfg: TrainConfig) -> str | None:
    """Returns the checkpoint to resume from, if any."""
    out = cfg.output_dir
    if os.path.isfile(out):
        raise UserError(f"--output-dir {out}: is a file")
    if cfg.resume:
        ckpts = complete_checkpoints(out)
        if not ckpts:
            _log(f"--resume: no complete checkpoint in {out}; starting from the beginning")
            return None
        _drop_incomplete_checkpoints(out)
        return ckpts[-1]
    if os.path.isdir(out) and os.listdir(out):
        if not cfg.overwrite:
            raise UserError(f"--output-dir {out}: not empty; pass --resume to continue the run in it, or --overwrite to replace it")
        shutil.rmtree(out)
    return None


class _NothingLeftToTrain(Exception):
    pass


# the training process's figures a resumed finished run keeps (its mean training loss goes through train_loss)
_TRAINING_FIGURES = ("train_tokens", "train_seconds", "rss_before_model_mib", "peak_rss_mib", "startup_seconds")


def _earlier_metrics(output_dir: str, steps: int) -> dict | None:
    """metrics.json of the process that trained this finished run, if it wrote one for these steps."""
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("steps") == steps and m.get("train_seconds") else None


def _make_callbacks(output_dir: str):
    from transformers import TrainerCallback

    class RunLog(TrainerCallback):
        """Appends each log entry (loss per step, eval loss) to log.jsonl as it happens."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs:
                return
            with open(os.path.join(output_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

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
                raise _NothingLeftToTrain

    class MarkComplete(TrainerCallback):
        # on_save runs after the Trainer has written model, optimiser, scheduler, RNG and state.
        def on_save(self, args, state, control, **kw):
            ckpt = os.path.join(output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(ckpt):
                with open(os.path.join(ckpt, COMPLETE), "w") as f:
                    f.write(str(state.global_step))
                    f.flush()
                    os.fsync(f.fileno())

    class StopOnNonFinite(TrainerCallback):
        """A NaN/inf loss stops training before anything is saved from the poisoned state."""

        bad = None

        def _stop(self, control, step, what):
            if self.bad is None:
                self.bad = (step, what)
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False

        # A step can leave inf/NaN weights while its own loss was finite: checked before a step is saved or
        # evaluated and after the last one (then nothing is written). Not after every step: weights gone bad make
        # the next logged loss NaN, which stops training anyway, and the check cost full fine-tuning of a 47M
        # model 0.13 s a step (an isfinite pass over every weight).
        checked = None  # the step whose weights were last checked

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

        def on_train_begin(self, args, state, control, **kw):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.bar is not None and logs:
                shown = {k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "eval_loss") and isinstance(v, float)}
                if shown:
                    self.bar.set_postfix(shown, refresh=False)

        def on_train_end(self, args, state, control, **kw):
            self.bar.close()

    return {"log": RunLog(), "clock": StartupClock(), "complete": MarkComplete(), "stop": StopOnNonFinite(),
            "progress": Progress(), "nothing_left": NothingLeft()}


def _with_length_grouping(trainer_cls):
    """The Trainer class with data/sampling.py's length grouping in place of transformers' (less padding on small
    data sets, batches in random order); --group-by-length false keeps the plain random order."""

    class LengthGroupedTrainer(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset if train_dataset is None else train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in getattr(ds, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            from .data.sampling import make_sampler

            lengths = [len(x) for x in ds["input_ids"]]
            return make_sampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    return LengthGroupedTrainer


def _write_final(cfg, method, model, tokenizer, metrics: dict):
    out = cfg.output_dir
    tmp = os.path.join(out, ".final-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    method.save(model, tmp)
    tokenizer.save_pretrained(tmp)
    import yaml

    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    from .methods import RUN_INFO

    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    shutil.rmtree(tmp)
    # Written last: its presence says the folder holds a finished adapter.
    with open(os.path.join(out, RUN_INFO), "w") as f:
        json.dump({"method": method.name, "base_model": cfg.model, "template": cfg.template,
                   "max_length": cfg.max_length, "config": cfg.to_dict()}, f, indent=2, ensure_ascii=False)


def _choose_epsilon(model, cfg) -> float:
    """AdamW's default eps 1e-8 is 0 in fp16: with fp16 trainable weights the update divides by zero."""
    import torch

    if cfg.adam_epsilon is not None:
        return cfg.adam_epsilon
    if any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters()):
        _log("fp16 weights are trained: AdamW epsilon 1e-8 rounds to 0 in fp16, using 1e-4 (set --adam-epsilon to override)")
        return 1e-4
    return 1e-8


def _trainable_to_fp32(model, cfg):
    """Adapter weights train in fp32 over a half-precision base (PEFT methods only: their weights are separate
    modules; full and BitFit train the base's own tensors, which stay in the chosen precision)."""
    import torch

    if cfg.precision == "fp32" or cfg.method in ("full", "bitfit"):
        return
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def train(cfg: TrainConfig, callbacks=None) -> TrainResult:
    """Train as `llm-tuning train` does. callbacks: extra transformers TrainerCallbacks (Python API only; e.g.
    benchmarks/step_breakdown.py profiles the training steps with one)."""
    from .data.formats import load_records, split_records
    from .methods import get_method

    t0 = time.time()
    method = get_method(cfg.method)
    if cfg.quantization and not method.trains_on_quantized:
        raise UserError(f"--method {cfg.method} cannot train on a --quantization {cfg.quantization} base: its weights "
                        "are frozen integers; use lora (QLoRA), ia3, prompt, ptuning or prefix, or drop --quantization")
    data = load_records(cfg.data, skip_bad_records=cfg.skip_bad_records)
    if data.skipped:
        _log(f"skipped {data.skipped} bad records of {cfg.data} (--skip-bad-records)")
    train_recs, val_recs = split_records(data.records, cfg.val_size, cfg.seed)
    from .models import check_source

    check_source(cfg.model, "model")
    if cfg.tokenizer:
        check_source(cfg.tokenizer, "tokenizer")
    resume_from = _prepare_output_dir(cfg)

    # Heavy imports only now that the input is known to be good.
    quiet_libraries()
    import transformers
    from transformers import Trainer, TrainingArguments, set_seed

    from .data.collate import make_collator
    from .data.tokenize import prepare_tokenizer
    from .evaluate import response_loss
    from .models import count_parameters, describe_parameters, load_model, load_tokenizer

    transformers.logging.set_verbosity_error()
    set_seed(cfg.seed)
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code), log=_log)
    from .data.cache import tokenized_dataset

    train_ds, dropped = tokenized_dataset(tokenizer, train_recs, cfg.template, cfg.max_length, cfg.cache, log=_log)
    if dropped:
        _log(f"dropped {dropped} records whose prompt alone fills --max-length {cfg.max_length}")
    if len(train_ds) == 0:
        raise UserError(f"{cfg.data}: no training example has response tokens within --max-length {cfg.max_length}")
    eval_ds = tokenized_dataset(tokenizer, val_recs, cfg.template, cfg.max_length, False)[0] if val_recs else None
    _log(f"data: {len(train_ds)} training examples, {len(val_recs)} held out, template {cfg.template!r}")

    rss_before_model = _reset_peak_rss_mib()
    model = load_model(cfg.model, cfg.precision, cfg.trust_remote_code, cfg.quantization, cfg.int8_threshold,
                       speedups=cfg.speedups)
    if cfg.quantization:
        from peft import prepare_model_for_kbit_training

        # Casts the non-quantised weights (norms, embeddings) to fp32 and lets gradients reach the inputs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _log(f"base loaded {cfg.quantization} through bitsandbytes"
             + (f" (LLM.int8, outlier threshold {cfg.int8_threshold})" if cfg.quantization == "8bit" else " (NF4, double quantisation)"))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        from .checkpointing import enable_after_method, enable_before_method

        model = enable_after_method(method.apply(enable_before_method(model, cfg.method), cfg), cfg.method)
        _log("gradient checkpointing on" + (" (per-layer, keeping the prefix cache)" if cfg.method == "prefix" else ""))
    else:
        model = method.apply(model, cfg)
    _trainable_to_fp32(model, cfg)
    trainable, total = count_parameters(model)
    _log(f"method {method.name}: {describe_parameters(model)}")

    lr = cfg.lr if cfg.lr is not None else method.default_lr
    eps = _choose_epsilon(model, cfg)
    collator = make_collator(tokenizer)
    from .guard import preflight

    preflight(tokenizer, train_ds, train_ds, model, cfg, eps, collator, log=_log)
    os.makedirs(cfg.output_dir, exist_ok=True)
    import torch

    args = TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=float(cfg.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=max(2, cfg.save_total_limit),  # >= 2 so a complete checkpoint survives a kill mid-save
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps,
        seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        adam_epsilon=eps,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_nan_inf_filter=False,  # the Trainer would otherwise hide a NaN loss from the log
    )
    from .fastloss import FAST_METHODS, make_trainer_class

    extra_callbacks = list(callbacks or [])
    callbacks = _make_callbacks(cfg.output_dir)
    trainer_cls = _with_length_grouping(make_trainer_class() if cfg.fast_loss and method.name in FAST_METHODS else Trainer)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        callbacks=list(callbacks.values()) + extra_callbacks,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if resume_from:
        _log(f"resuming from {resume_from}")
    earlier = None
    try:
        out = trainer.train(resume_from_checkpoint=resume_from)
        train_loss, train_seconds = out.training_loss, out.metrics.get("train_runtime", 0.0)
    except _NothingLeftToTrain:
        if callbacks["progress"].bar is not None:
            callbacks["progress"].bar.close()
        _log(f"{resume_from} is the last step ({trainer.state.global_step}): nothing left to train")
        logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        train_loss, train_seconds = (logged[-1] if logged else None), 0.0  # no training in this process
        earlier = _earlier_metrics(cfg.output_dir, trainer.state.global_step)
        if earlier and earlier.get("train_loss") is not None:
            train_loss = earlier["train_loss"]  # the run's mean training loss, as the training process reported it
    finally:
        from .fastloss import release_buffers

        release_buffers()
    stop = callbacks["stop"]
    if stop.bad:
        good = complete_checkpoints(cfg.output_dir)
        raise UserError(
            f"training stopped at step {stop.bad[0]}: {stop.bad[1]}; "
            + (f"the last good checkpoint is {good[-1]} (--resume continues from it); " if good else "")
            + "try a lower --lr, or --precision bf16/fp32"
        )
    train_loss = train_loss if train_loss is not None and math.isfinite(train_loss) else None

    eval_loss = None
    if val_recs:
        eval_loss = response_loss(model, tokenizer, val_recs, cfg.template, cfg.max_length, cfg.batch_size)["loss"]
        _log(f"held-out loss {eval_loss:.4f} (perplexity {math.exp(min(eval_loss, 50)):.2f}) on {len(val_recs)} records")

    seconds = time.time() - t0
    metrics = {
        "method": method.name, "trainable_params": trainable, "total_params": total,
        "steps": trainer.state.global_step, "train_loss": train_loss, "eval_loss": eval_loss,
        "seconds": round(seconds, 2), "learning_rate": lr,
        "train_tokens": int(trainer.state.num_input_tokens_seen or 0),  # real (non-padding) tokens trained on
        "train_seconds": round(train_seconds, 3),
        "rss_before_model_mib": round(rss_before_model, 1),  # RSS (MiB) just before the model load
        "peak_rss_mib": round(_peak_rss_mib(), 1),  # peak RSS (MiB) from then on
        "startup_seconds": callbacks["clock"].seconds,
        "log_history": trainer.state.log_history,
    }
    if earlier:
        # nothing trained in this process: the training figures are those of the process that did (a comparison
        # interrupted after training reruns its training with --resume and reads tokens/s and memory from here)
        metrics.update({k: earlier[k] for k in _TRAINING_FIGURES if k in earlier}, figures_from_earlier_process=True)
    _write_final(cfg, method, model, tokenizer, metrics)
    _log(f"saved the {method.name} {'model' if method.name == 'full' else 'adapter'}, tokenizer, config.yaml and metrics.json to {cfg.output_dir}")
    return TrainResult(cfg.output_dir, method.name, trainable, total, train_loss, eval_loss,
                       trainer.state.global_step, seconds, trainer.state.log_history)
