"""Training as a recipe, in named phases that can be read and run one by one:

    check (the input, before anything heavy is imported or written) -> data (tokenizer, tokenised examples) ->
    model (the base: precision, quantisation) -> method (applied, checkpointing, fp32 adapter) -> fit (the
    Trainer) -> validate (held-out loss) -> save (adapter, config, metrics)

The loop itself is the transformers Trainer (trainer.py: one declared subclass, its behaviours switched on by the
config and the method). Around it: resumable checkpoints and atomic final artefacts (rundir.py); the per-step loss
in log.jsonl as it happens, a non-finite guard and one progress bar (callbacks.py); the pre-flight guard (guard.py).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import UserError
from ..log import log, quiet, warn
from ..memory.allocator import return_freed_memory
from ..memory.gpu_peaks import describe as describe_gpu_peaks, gpu_peaks, reset_peak_gpu
from ..memory.process import peak_rss_mib, reset_peak_rss_mib
from ..models.load import quiet_libraries
from .processes import gathered, warn_about_launch
from .resume import check_resume_matches, write_run_config
from .rundir import TRAINING_FIGURES, complete_checkpoints, earlier_metrics, prepare_output_dir_once, write_final


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


def _choose_epsilon(model, cfg) -> float:
    """AdamW's default eps 1e-8 is 0 in fp16: with fp16 trainable weights the update divides by zero."""
    import torch

    if cfg.adam_epsilon is not None:
        return cfg.adam_epsilon
    if any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters()):
        log("fp16 weights are trained: AdamW epsilon 1e-8 rounds to 0 in fp16, using 1e-4 (set --adam-epsilon to override)")
        return 1e-4
    return 1e-8


def check(cfg: TrainConfig):
    """Everything that can be checked before heavy imports: method, data, model path, output folder.
    Returns (method, training records, held-out records, checkpoint to resume from)."""
    from ..methods import check_quantizable, get_method
    from ..models.checkpointing import check_options as check_checkpointing
    from ..models.load import check_source

    method = get_method(cfg.method)
    check_resume_matches(cfg, method)  # before a checkpoint of another shape or data meets the Trainer
    check_checkpointing(cfg)
    if cfg.packing:  # one line where packing cannot apply (the method says, data/packing.py)
        from ..data.packing import check_packing

        check_packing(method)
    check_quantizable(cfg.method, cfg.quantization)
    if cfg.lr is not None and (note := method.lr_warning(cfg.lr)):
        warn(note)
    train_recs, val_recs = _records(cfg)
    check_source(cfg.model, "model")
    check_source(cfg.tokenizer or cfg.model, "tokenizer")  # a model folder without one: say so before any work
    _check_report_to(cfg.report_to)
    # under N processes the process group starts here, once the input is known to be good (rundir.py)
    return method, train_recs, val_recs, prepare_output_dir_once(cfg.output_dir, cfg.resume, cfg.overwrite)


def _records(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(training, validation) records: --data and --val-data's file, or a --val-size split of --data."""
    from ..data.formats import split_records

    if cfg.val_data and cfg.val_size:
        raise UserError(f"--val-data {cfg.val_data} and --val-size {cfg.val_size:g}: the validation records come "
                        "from their own file or from a split of --data, not both; drop one")
    records = _load(cfg, cfg.data)
    if cfg.val_data:
        return records, _load(cfg, cfg.val_data)
    return split_records(records, cfg.val_size, cfg.seed)


def heldout_records(cfg: TrainConfig) -> list[dict]:
    """The records a run of `cfg` held out from training (`eval --run` scores them again)."""
    return _records(cfg)[1]


def _load(cfg: TrainConfig, path: str) -> list[dict]:
    from ..data.formats import load_records

    data = load_records(path, skip_bad_records=cfg.skip_bad_records, encoding=cfg.encoding)
    if data.skipped:
        log(f"skipped {data.skipped} bad records of {path} (--skip-bad-records)")
    return data.records


def sized_by_memory(cfg: TrainConfig) -> TrainConfig:
    """`--batch-size auto`, then `--checkpoint-every auto`, resolved (memory/sizing.py); under several processes
    the smallest any of them chose, so that every process steps the same batch (and none runs out of memory)."""
    from ..memory.sizing import resolve_auto

    return resolve_auto(cfg, log, agree=_smallest_over_processes)


def _smallest_over_processes(cfg: TrainConfig, field: str) -> TrainConfig:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return cfg
    import dataclasses

    import torch

    t = torch.tensor([getattr(cfg, field)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return dataclasses.replace(cfg, **{field: int(t.item())})


def _check_report_to(report_to):
    """A tracker's package is checked before the model loads, not after minutes of loading."""
    if report_to and report_to != "none":
        from transformers.integrations import integration_utils as tracking

        if not getattr(tracking, f"is_{report_to}_available")():
            raise UserError(f"--report-to {report_to}: the {report_to} package is not installed; "
                            f"pip install {report_to}, or drop --report-to")


def data(cfg: TrainConfig, tokenizer, train_recs, val_recs):
    from ..data.cache import tokenized_dataset

    train_ds, dropped = tokenized_dataset(tokenizer, train_recs, cfg.template, cfg.max_length, cfg.cache, log=log,
                                          train_on=cfg.train_on)
    if dropped:
        log(f"dropped {dropped} records whose prompt alone fills --max-length {cfg.max_length}")
    if len(train_ds) == 0:
        raise UserError(f"{cfg.data}: no training example has response tokens within --max-length {cfg.max_length}")
    eval_ds = (tokenized_dataset(tokenizer, val_recs, cfg.template, cfg.max_length, False, train_on=cfg.train_on)[0]
               if val_recs else None)
    log(f"data: {len(train_ds)} training examples, {len(val_recs)} held out, template {cfg.template!r}")
    return train_ds, eval_ds


def model(cfg: TrainConfig, chosen, tokenizer, loss_path: str = "fused"):
    """The base, loaded in its precision or quantised (with the kernels and packing `chosen` trains with)."""
    from ..models.load import load_model

    base = load_model(cfg.model, cfg.precision, cfg.trust_remote_code, cfg.quantization, cfg.int8_threshold,
                      speedups=cfg.speedups)
    _gpu_path_model_hooks(cfg, chosen, base, loss_path)
    if cfg.quantization:
        from peft import prepare_model_for_kbit_training

        # Casts the non-quantised weights (norms, embeddings) to fp32 and lets gradients reach the inputs.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        log(f"base loaded {cfg.quantization} through bitsandbytes"
            + (f" (LLM.int8, outlier threshold {cfg.int8_threshold})" if cfg.quantization == "8bit" else " (NF4, double quantisation)"))
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    return base


def method(cfg: TrainConfig, chosen, base):
    """The method applied to the base (with gradient checkpointing where asked), adapter weights in fp32."""
    from ..models.params import describe_parameters

    tuned = chosen.prepare(base, cfg)
    if cfg.gradient_checkpointing:
        from ..models.checkpointing import describe

        log(f"gradient checkpointing on ({describe(tuned, cfg.checkpoint_every)})")
    log(f"method {chosen.name}: {describe_parameters(tuned)}")
    return tuned


def _gpu_path_model_hooks(cfg, chosen, model, loss_path):
    """Liger's layer kernels on the base (train/kernels.py); packing's model checks."""
    if loss_path == "liger":
        from .kernels import apply_liger

        log(apply_liger(model))
    if cfg.packing:
        from ..data.packing import check_packing
        from ..models.packed_attention import prepare_for_packing

        check_packing(chosen, model.config.model_type, cfg.speedups, model.config._attn_implementation)
        log(f"packing: each micro-batch's examples in one row; {prepare_for_packing(model)}")


def _training_arguments(cfg: TrainConfig, lr: float, eps: float, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    report_to = cfg.report_to or "none"
    return TrainingArguments(
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps,
        seed=cfg.seed,
        report_to=report_to,  # the Trainer's own tracker callbacks (tensorboard, wandb, mlflow)
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        adam_epsilon=eps,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_nan_inf_filter=False,  # the Trainer would otherwise hide a NaN loss from the log
        # Under DDP: every trainable parameter of every method takes part in every step (checked under torchrun,
        # docs/distributed.md). The Trainer would choose True for a PEFT model (not a PreTrainedModel), and DDP
        # then walks the autograd graph after each backward to find none.
        ddp_find_unused_parameters=False,
    )


def _sharded(trainer) -> bool:
    """FSDP or DeepSpeed ZeRO-3: each process holds only a shard of the weights."""
    return trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled
                                       and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3)


def _gathered_state_dict(trainer):
    """The whole state dict where the weights are sharded, gathered by every process together as the Trainer's
    own save does (accelerate's get_state_dict); None elsewhere (rank 0's own weights are whole). Not run here:
    no GPU (docs/distributed.md)."""
    return trainer.accelerator.get_state_dict(trainer.model_wrapped) if _sharded(trainer) else None


def make_trainer(cfg, chosen, tuned, args, train_ds, eval_ds, collator, callbacks, loss_path="fused", heldout=None):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .trainer import LLMTrainer

    linear_ce = None
    if loss_path == "liger":  # the loss path from --kernels (train/kernels.py): liger, fused (CPU) or stock
        from .kernels import liger_linear_cross_entropy_sum as linear_ce
    trainer = LLMTrainer(model=tuned, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                         callbacks=callbacks, method=chosen, linear_ce=linear_ce,
                         fused_loss=loss_path in ("fused", "liger") and chosen.fast_loss, heldout_loss=heldout)
    if _sharded(trainer) and not chosen.shardable:
        raise UserError(f"--method {chosen.name} under FSDP or DeepSpeed ZeRO-3: its weights are saved from one "
                        "process, which holds only a shard of them there; use DDP or ZeRO-2 (examples/accelerate/)")
    if loss_path in ("fused", "liger") and chosen.fast_loss and not trainer.fused_loss:
        log("FSDP / DeepSpeed: the fused loss steps aside (stock forward and loss)")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def fit(trainer, resume_from, callbacks, output_dir):
    """trainer.train(); returns (mean training loss, training seconds, figures of the process that trained when
    this one had nothing left to train)."""
    from .callbacks import NothingLeftToTrain
    from .fastloss import release_buffers

    if resume_from:
        log(f"resuming from {resume_from}")
    try:
        out = trainer.train(resume_from_checkpoint=resume_from)
        return out.training_loss, out.metrics.get("train_runtime", 0.0), None
    except NothingLeftToTrain:
        callbacks["progress"].close()
        log(f"{resume_from} is the last step ({trainer.state.global_step}): nothing left to train")
        logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        train_loss = logged[-1] if logged else None
        earlier = earlier_metrics(output_dir, trainer.state.global_step)
        if earlier and earlier.get("train_loss") is not None:
            train_loss = earlier["train_loss"]  # the run's mean training loss, as the training process reported it
        return train_loss, 0.0, earlier  # no training in this process
    except KeyboardInterrupt:
        callbacks["progress"].close()  # the bar ends its line before the command says how to go on
        raise
    finally:
        release_buffers()


def _raise_if_stopped(stop, output_dir):
    if stop.bad:
        good = complete_checkpoints(output_dir)
        raise UserError(
            f"training stopped at step {stop.bad[0]}: {stop.bad[1]}; "
            + (f"the last good checkpoint is {good[-1]} (--resume continues from it); " if good else "")
            + "try a lower --lr, or --precision bf16/fp32"
        )


def _metrics(method, model, trainer, lr, losses, seconds, rss_before_model, startup, earlier) -> dict:
    from ..models.params import count_parameters

    trainable, total = count_parameters(model)
    train_loss, eval_loss, train_seconds = losses
    metrics = {
        "method": method.name, "trainable_params": trainable, "total_params": total,
        "steps": trainer.state.global_step, "train_loss": train_loss, "eval_loss": eval_loss,
        "seconds": round(seconds, 2), "learning_rate": lr,
        "train_tokens": int(trainer.state.num_input_tokens_seen or 0),  # real (non-padding) tokens trained on
        "train_seconds": round(train_seconds, 3),
        "rss_before_model_mib": round(rss_before_model, 1),  # RSS (MiB) just before the model load
        "peak_rss_mib": round(peak_rss_mib(), 1),  # peak RSS (MiB) from then on
        **_per_process_memory(rss_before_model),
        "startup_seconds": startup,
        "log_history": trainer.state.log_history,
        **gpu_peaks(),  # CUDA only (memory/gpu_peaks.py)
    }
    if earlier:
        # nothing trained in this process: the training figures are those of the process that did (a comparison
        # interrupted after training reruns its training with --resume and reads tokens/s and memory from here)
        metrics.update({k: earlier[k] for k in TRAINING_FIGURES if k in earlier}, figures_from_earlier_process=True)
    return metrics


def _per_process_memory(rss_before_model: float) -> dict:
    """Under N processes, every process's RSS before the model load and peak, in rank order (the keys above are
    rank 0's): what sharding saves is each process's own peak. Every process calls this (a collective)."""
    figures = gathered((round(rss_before_model, 1), round(peak_rss_mib(), 1)))
    if len(figures) == 1:
        return {}
    log("peak RSS per process: " + ", ".join(f"{peak:.0f}" for _, peak in figures) + " MiB")
    return {"rss_before_model_mib_per_process": [before for before, _ in figures],
            "peak_rss_mib_per_process": [peak for _, peak in figures]}


def heldout_loss(cfg: TrainConfig, tokenizer, val_recs):
    """The held-out loss of a model: the mean cross-entropy over every response token of the held-out records
    (evaluate.response_loss). One function for the base before training, the Trainer's evaluations during it
    and the final figure, so that the three are one measure. None without held-out records."""
    if not val_recs:
        return None
    from ..evaluate import response_loss

    return lambda model: response_loss(model, tokenizer, val_recs, cfg.template, cfg.max_length,
                                       cfg.batch_size)["loss"]


def base_eval(cfg: TrainConfig, base, heldout) -> float | None:
    """The base model's held-out loss, before any method touches it (--base-eval false: skipped)."""
    if heldout is None or not cfg.base_eval:
        return None
    loss = heldout(base)
    log(f"base model: held-out loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})")
    return loss


def _base_eval_apart(cfg: TrainConfig, base, heldout) -> tuple[float | None, dict]:
    """(the base's held-out loss, the GPU peaks of loading so far): on CUDA the peaks restart after the base's
    evaluation, whose activations are neither loading's nor training's."""
    loading = gpu_peaks("load_peak")
    loss = base_eval(cfg, base, heldout)
    if loss is not None:
        reset_peak_gpu()
    return loss, loading


def _higher(peaks: dict, other: dict) -> dict:
    """`peaks` with each figure `other` also has raised to the higher of the two."""
    return {k: max(v, other[k]) if k in other else v for k, v in peaks.items()}


def validate(tuned, heldout) -> float | None:
    """The held-out loss after training (None without held-out records)."""
    return None if heldout is None else heldout(tuned)


def effect(base_loss: float | None, loss: float | None) -> str | None:
    """The run's last line: what training did to the held-out loss (None without held-out records)."""
    if loss is None:
        return None
    if base_loss is None:
        return f"held-out loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})"
    return f"held-out loss {base_loss:.4f} -> {loss:.4f} ({loss - base_loss:+.4f})"


def save(cfg: TrainConfig, chosen, tuned, tokenizer, trainer, metrics):
    write_final(cfg, chosen, tuned, tokenizer, metrics, _gathered_state_dict(trainer))
    log(f"saved the {chosen.name} {'model' if chosen.saves_model else 'adapter'}, tokenizer, config.yaml and "
        f"metrics.json to {cfg.output_dir}")


def _loss_path(cfg) -> str:
    """--kernels resolved for this device (train/kernels.py), logged once."""
    import torch

    from .kernels import resolve

    cuda = torch.cuda.is_available()
    path = resolve(cfg.kernels, cfg.fast_loss, cuda)
    if cuda or cfg.kernels != "auto":  # the CPU's default (the fused loss) goes unsaid, as before
        log({"liger": "kernels: Liger (fused linear cross-entropy and layer kernels)"
                      + ("" if cuda else " under Triton's interpreter on the CPU: slow, a check of the wiring"),
             "fused": "kernels: the project's fused output layer + loss (CPU)",
             "stock": "kernels: transformers' stock forward and loss"
                      + (" (the CPU fused loss steps aside on CUDA)" if cuda and cfg.fast_loss else "")}[path])
    return path


def train(cfg: TrainConfig, callbacks=None) -> TrainResult:
    """Train as `llm-tuning train` does. callbacks: extra transformers TrainerCallbacks (Python API only; e.g.
    benchmarks/step_breakdown.py profiles the training steps with one)."""
    with quiet(cfg.quiet):  # --quiet for this run only
        return _train(cfg, callbacks)


def _checked_collator(cfg: TrainConfig, tokenizer, train_ds, tuned, eps):
    """The batch collator, after the guard's pre-flight over the padded one (packing swaps it in afterwards)."""
    from ..data.collate import make_collator
    from .guard import preflight

    collator = make_collator(tokenizer)
    preflight(tokenizer, train_ds, train_ds, tuned, cfg, eps, collator, log=log)
    if cfg.packing:  # the padded collator above is the one the guard checks
        from ..data.packing import packing_collator
        from ..models.packed_attention import uses_flash_attention

        collator = packing_collator(uses_flash_attention(tuned))
    return collator


def _train(cfg: TrainConfig, callbacks) -> TrainResult:
    t0 = time.time()
    warn_about_launch()
    chosen, train_recs, val_recs, resume_from = check(cfg)
    loss_path = _loss_path(cfg)  # --kernels liger on a CPU stops here, in one line
    cfg = sized_by_memory(cfg)  # --batch-size / --checkpoint-every auto: from the memory estimate, before loading
    write_run_config(cfg)  # now, so that `--resume` alone continues a run interrupted before its end

    # Heavy imports only now that the input is known to be good.
    quiet_libraries()
    import transformers

    from ..data.tokenize import prepare_tokenizer
    from ..models.load import load_tokenizer
    from .callbacks import make_callbacks

    transformers.logging.set_verbosity_error()
    transformers.set_seed(cfg.seed)
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code), log=log,
                                  template=cfg.template)
    train_ds, eval_ds = data(cfg, tokenizer, train_recs, val_recs)

    heldout = heldout_loss(cfg, tokenizer, val_recs)
    rss_before_model = reset_peak_rss_mib()
    reset_peak_gpu()
    base = model(cfg, chosen, tokenizer, loss_path)
    base_loss, loading_gpu = _base_eval_apart(cfg, base, heldout)
    tuned = method(cfg, chosen, base)
    loaded_gpu = _higher(gpu_peaks("load_peak"), loading_gpu)  # CUDA only: loading's peak, apart from training's
    lr = cfg.lr if cfg.lr is not None else chosen.default_lr
    eps = _choose_epsilon(tuned, cfg)
    collator = _checked_collator(cfg, tokenizer, train_ds, tuned, eps)
    os.makedirs(cfg.output_dir, exist_ok=True)

    run_callbacks = make_callbacks(cfg.output_dir)
    trainer = make_trainer(cfg, chosen, tuned, _training_arguments(cfg, lr, eps, eval_ds is not None), train_ds,
                           eval_ds, collator, list(run_callbacks.values()) + list(callbacks or []), loss_path,
                           heldout)
    train_loss, train_seconds, earlier = fit(trainer, resume_from, run_callbacks, cfg.output_dir)
    _raise_if_stopped(run_callbacks["stop"], cfg.output_dir)
    train_loss = train_loss if train_loss is not None and math.isfinite(train_loss) else None
    eval_loss = validate(tuned, heldout)

    seconds = time.time() - t0
    metrics = _metrics(chosen, tuned, trainer, lr, (train_loss, eval_loss, train_seconds), seconds, rss_before_model,
                       run_callbacks["clock"].seconds, earlier)
    metrics.update(_higher(metrics, {k.replace("load_peak", "peak"): v for k, v in loading_gpu.items()}))
    metrics.update(loaded_gpu, base_eval_loss=base_loss, heldout_records=len(val_recs),
                   train_examples=len(train_ds))
    if peaks := describe_gpu_peaks(metrics):
        log(peaks)
    save(cfg, chosen, tuned, tokenizer, trainer, metrics)
    if line := effect(base_loss, eval_loss):
        log(line)
    return TrainResult(cfg.output_dir, chosen.name, metrics["trainable_params"], metrics["total_params"], train_loss,
                       eval_loss, trainer.state.global_step, seconds, trainer.state.log_history)


def train_process(cfg: TrainConfig) -> TrainResult:
    """`llm-tuning train` as a whole process (the CLI and the comparison's worker alike): glibc's malloc gives
    freed tensors back to the system (memory/allocator.py: the peak is then the estimate's); a run that quantises
    nothing never imports bitsandbytes (models/load.py, skip_bitsandbytes)."""
    return_freed_memory()
    if not cfg.quantization:
        from ..models.load import skip_bitsandbytes

        skip_bitsandbytes()
    return train(cfg)
