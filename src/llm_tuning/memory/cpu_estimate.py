"""Peak training memory from a model config alone: `llm-tuning estimate`.

No weights are read: the numbers follow from the tensor shapes of the architecture, the method, the
precision, the quantisation, the batch and the sequence length. The estimate models what *this project's*
training does (see train/loop.py): a plain half-precision or fp32 base, no autocast; PEFT adapters in fp32 over
a half base (`Method.prepare`); `prepare_model_for_kbit_training` over a quantised base (which casts the
non-quantised weights to fp32); AdamW; transformers' SDPA attention for Llama; for Bloom, with `bloom_sdpa`, the
project's SDPA attention (models/speedups.py, what train runs unless --speedups is off: one shared bias instead of
each layer's [B, heads, L, L] probabilities; estimate_run asks for it as the run has it), else transformers' eager
attention, both held against autograd's saved tensors; the fused output layer + loss of train/fastloss.py
(vocabulary blocks or row chunks, loss_chunks.py) for every method (unless fast_loss is off; that path runs without
a KV cache), the stock causal-LM loss over B·L·V logits otherwise.

Every byte count below names the tensor it is. Per-token activation terms come from walking the forward of
one decoder layer op by op and asking, for each op, which inputs or outputs autograd keeps for the backward
(and only when something upstream or the op's own weight needs a gradient). Checked against autograd's
saved tensors and against measured peak RSS of real training steps in tests/test_estimate.py.

The process itself is one measured constant (RUNTIME), and a load that converts the checkpoint has its own
peak (_loading_peak). Not modelled: padding masks (a padded batch gives SDPA a B·L·L mask per layer), the
p-tuning / prefix-projection encoders' own activations (num_virtual_tokens rows), the allocators' retained
memory (on a CPU glibc's heap keeps freed tensors' pages: 0.3-1.4 GiB at Bloom-1b4 with batch 4 x 256, by the
allocation history, benchmarks/README.md; on a GPU the caching allocator's fragmentation), cuBLAS / MKL / oneDNN
workspaces. The optimizer-step transient assumes PyTorch's per-tensor
AdamW (the CPU default); a foreach AdamW makes temporaries of all trainable tensors at once, a fused one none.
"""

from __future__ import annotations

from ..methods import check_quantizable
from ..methods.base import Footprint
from ..models.arch import Arch, EstimateError, arch_of, count_params, load_config
from .activations import _activations, _Run
from .dtype_bytes import DTYPE_BYTES, FP32, INT64, NF4_BYTES_PER_PARAM, PRECISION_DTYPE, STORED_BYTES, stored_dtype
from .loss_chunks import VOCAB_BLOCK, block_rows, chunk_rows
from .params import method_of, options

# What `training` (the training step's peak) sums; `total` is the larger of it and `loading`;
# `quantisation_savings` is information (already inside `weights`); `tensors` is `training` less the runtime
# (the analogue of a GPU allocator's allocated bytes).
SUMMED = ("runtime", "weights", "trainable_weights", "gradients", "optimizer", "activations", "overhead",
          "freed_before_peak")
# The process before the model loads: the interpreter, torch, transformers, PEFT, datasets, the tokenizer and the
# tokenised data. Measured with `llm-tuning train` (rss_before_model_mib in metrics.json): 473 MiB for the
# Llama-2 tokenizer and 48 records (benchmarks/real_size.py), 0.53 GiB at the first step. On a GPU the CUDA
# context takes about as much host memory and a few hundred MiB of the device's.
RUNTIME = 512 * 2**20
LABELS = {
    "runtime": "the process (Python, torch, libraries)",
    "weights": "base weights",
    "trainable_weights": "trainable weights (adapter)",
    "gradients": "gradients",
    "optimizer": "optimizer (AdamW, 2 states)",
    "activations": "activations kept for backward",
    "overhead": "transient at the peak",
    "freed_before_peak": "less: of those, freed before the peak",  # a negative line: said so
    "training": "training step peak",
    "loading": "loading peak (checkpoint pages + converted weights)",
    "total": "total (peak)",
    "quantisation_savings": "saved by quantisation",
}



# ---------------------------------------------------------------- the estimate


def _weights(a: Arch, base_bytes: int, quant: str | None) -> tuple[float, float]:
    """(base weight bytes, largest decoder linear in elements) for the precision and quantisation."""
    total = count_params(a)
    lin = a.linears()
    linear_w = a.layers * sum(i * o for i, o, _ in lin.values())
    if not quant:
        return total * base_bytes, max(i * o for i, o, _ in lin.values())
    rest = total - linear_w  # embeddings, norms, biases, lm_head: prepare_model_for_kbit_training casts them to fp32
    if quant == "8bit":
        # int8 weight + one fp32 scale (SCB) per output row
        q = a.layers * sum(i * o + FP32 * o for i, o, _ in lin.values())
    elif quant == "4bit":
        q = linear_w * NF4_BYTES_PER_PARAM
    else:
        raise EstimateError(f"--quantization {quant!r} is unknown; choose 8bit or 4bit")
    return q + FP32 * rest, max(i * o for i, o, _ in lin.values())


def _check(method, precision, quantization, batch_size, max_length):
    if precision not in DTYPE_BYTES:
        raise EstimateError(f"--precision {precision!r} is unknown; choose one of {', '.join(DTYPE_BYTES)}")
    if quantization not in (None, "8bit", "4bit"):
        raise EstimateError(f"--quantization {quantization!r} is unknown; choose 8bit or 4bit")
    check_quantizable(method.name, quantization)
    if batch_size < 1 or max_length < 1:
        raise EstimateError("--batch-size and --max-length must be at least 1")


def _run_for(a: Arch, fp: Footprint, act, quantization, gc, batch_size, max_length, every=1, sdpa=False) -> _Run:
    """The activation walk's view of this run: hidden dtype, positions (virtual tokens included), targets."""
    seq = max_length + fp.input_tokens
    return _Run(a, fp, act, quantization, gc, batch_size, seq, seq + fp.prefix_tokens, every=every, sdpa=sdpa)


def _output_layer(r: _Run, p, fast: bool) -> tuple[float, float, float]:
    """The output layer and the loss: (kept for the backward, forward transient, backward transient); the stock
    loss's transients are its own phases (_stock_loss_phases)."""
    a, fp = r.arch, r.fp
    if fast:
        return _fused_output_layer(a, fp, r.act, p, r.batch, r.seq, r.tokens)
    # the stock causal-LM loss: lm_head keeps its input when it trains; log_softmax keeps its fp32 output
    return (r.act * a.hidden * r.tokens if fp.linear_weights else 0) + FP32 * a.vocab * r.tokens, 0.0, 0.0


def _fused_output_layer(a: Arch, fp: Footprint, act, p, batch_size, seq, t) -> tuple[float, float, float]:
    """train/fastloss.py (train's default for every method): the output layer and the cross-entropy run fused, piece
    by piece, on the learned positions only (here every position but the last: an upper bound), their gradients
    formed in the forward. Returns (kept for the backward, forward transient, backward transient)."""
    h, v = a.hidden, a.vocab
    head_trains = fp.linear_weights  # the output layer's weight (Bloom: tied to the input embedding)
    learned = batch_size * (seq - 1)
    # Kept: the hidden-state gradient (and, when the output layer trains, its fp32 weight gradient) and the int64
    # row and column indices of the learned positions. The logits never exist whole.
    kept = (act * h + 2 * INT64) * learned + (FP32 * v * h if head_trains else 0)
    if not head_trains and act == FP32:
        # Vocabulary blocks (a frozen fp32 output layer): the learned hidden states gathered for the head, the
        # output layer's rows of their targets, one [rows x VOCAB_BLOCK] block of logits.
        forward = act * h * learned + FP32 * h * learned + FP32 * block_rows(learned) * min(VOCAB_BLOCK, v)
    else:
        chunk_logits = chunk_rows(learned, v) * v  # equal chunks of at most CHUNK_ELEMENTS logits
        # Row chunks: the learned hidden states gathered for the head; one chunk's fp32 logits, turned in place
        # into the softmax-gradient (in half precision: the matmul's output before the fp32 copy, and the
        # gradient's cast back); the fp32 weight-gradient product when it trains.
        forward = act * h * learned + chunk_logits * (FP32 + (2 * act if act != FP32 else 0)) + (
            FP32 * v * h if head_trains else 0)
    # Its backward: the gradients scaled by the loss's gradient (and cast), the zero-filled gradient of the
    # whole last hidden state the gathered rows scatter into.
    backward = act * h * learned + act * h * t + ((FP32 + (p if p != FP32 else 0)) * v * h if head_trains else 0)
    return kept, forward, backward


def _trained(m, fp: Footprint, p: int) -> tuple:
    """(bytes per trained element, trainable weights, gradients, optimizer state) in bytes. PEFT adapters train in
    fp32 (Method.prepare); full and BitFit train the base's own tensors in its precision; BitFit's zero biases
    for Llama are new tensors beside the base weights. AdamW: exp_avg and exp_avg_sq, like the parameters."""
    train_bytes = p if m.in_base_dtype else FP32
    trainable_weights = fp.trainable * FP32 if not m.in_base_dtype else fp.added * p
    return train_bytes, trainable_weights, fp.trainable * train_bytes, 2 * fp.trainable * train_bytes


def _first_layer_grads(a: Arch, fp: Footprint, gradients, p) -> float:
    """Gradients not yet written while the first layer's backward runs (its own; full: also the embedding's)."""
    if fp.linear_weights:
        layer_params = (count_params(a) - a.vocab * a.hidden * (1 if a.tied else 2)) / a.layers
        return (layer_params + (0 if a.tied else a.vocab * a.hidden)) * p
    return gradients / a.layers if fp.in_layers else 0


def _stock_loss_phases(a: Arch, fp: Footprint, kept, t, act, quantization, p, cache) -> list:
    """The stock causal-LM loss over B·L·V logits (--fast-loss false)."""
    v, h = a.vocab, a.hidden
    logits_bytes = act if not quantization else FP32  # lm_head output dtype (fp32 lm_head over a quantised base)
    head_grad = (v * h * p) if fp.linear_weights else 0
    return [
        # the loss is computed: the logits, their fp32 copy for the loss (unless fp32 already), the cache
        (kept, 0, logits_bytes * v * t + (FP32 * v * t if logits_bytes != FP32 else 0) + cache),
        # the cross-entropy backward: nll_loss's dense fp32 gradient over the vocabulary and log_softmax's fp32
        # input gradient, both alive with the kept log_softmax output
        (kept, 0, 2 * FP32 * v * t),
        # lm_head backward: log_softmax's output freed; the logits' gradient and the weight gradient alive
        (kept - FP32 * v * t, head_grad, logits_bytes * v * t),
    ]


def _loading_peak(config, a: Arch, precision, quantization, weights) -> float:
    """The process while the model loads, when it converts: transformers maps every shard of the checkpoint and
    keeps the mappings until the last tensor is loaded, so the pages read stay resident (and in RSS) beside the
    converted weights (measured: a 4.85 GiB fp32 Bloom loaded in bf16 peaked at 7.68 GiB, 0.39 + 4.85 + 2.43,
    then fell to 2.82). Loaded in its stored dtype, a weight is the mapped file itself: no second copy (0 here).
    Unknown stored dtype (a config without one): 0."""
    stored = stored_dtype(config)
    if stored is None or (stored == PRECISION_DTYPE[precision] and not quantization):
        return 0.0
    return RUNTIME + count_params(a) * STORED_BYTES[stored] + weights


def _given_or_default(o, **given) -> list:
    """Each setting as given, or where not (None) `train`'s default (o: the TrainConfig of the method options)."""
    return [getattr(o, k) if v is None else v for k, v in given.items()]


def estimate(config, method: str, precision: str | None = None, quantization: str | None = None,
             batch_size: int | None = None, max_length: int | None = None, gradient_checkpointing: bool | None = None,
             opts=None, bloom_sdpa: bool = False) -> dict:
    """Peak training memory in bytes, by component (see SUMMED), plus trainable_params and total_params. A setting
    not given is `train`'s default (TrainConfig), as the command's is. bloom_sdpa: walk Bloom's attention as the
    project's SDPA replacement (models/speedups.py; what train runs unless --speedups is off) rather than eager."""
    m, o = method_of(method), options(opts)
    precision, batch_size, max_length, gradient_checkpointing = _given_or_default(
        o, precision=precision, batch_size=batch_size, max_length=max_length,
        gradient_checkpointing=gradient_checkpointing)
    _check(m, precision, quantization, batch_size, max_length)
    config = load_config(config) if isinstance(config, str) else config  # once: shapes and stored dtype
    a = arch_of(config)
    fp = m.footprint(a, o)
    p = DTYPE_BYTES[precision]
    n_train, n_total = fp.trainable, count_params(a)
    base_weights, largest_linear = _weights(a, p, quantization)
    weights = base_weights + fp.buffers  # the adapter's frozen tensors (VeRA's projections) beside the base's
    train_bytes, trainable_weights, gradients, optimizer = _trained(m, fp, p)

    # Hidden-state dtype: the precision, except over a quantised base, where the embeddings and norms are fp32
    # (prepare_model_for_kbit_training) and bitsandbytes returns each matmul in its input's dtype.
    act = FP32 if quantization else p
    r = _run_for(a, fp, act, quantization, gradient_checkpointing, batch_size, max_length,
                 getattr(o, "checkpoint_every", 1), sdpa=bloom_sdpa)
    ac = _activations(r)
    backbone = ac["layers"] + ac["head"] + ac["stash"]
    fast = bool(o.fast_loss) and m.fast_loss
    if fast:
        ac["cache"] = 0.0  # train/fastloss.py's forward asks for no KV cache
    out_kept, out_forward, out_backward = _output_layer(r, p, fast)
    kept = backbone + out_kept
    # Dequantising: bitsandbytes materialises one linear's weight at a time in the compute dtype (fp32 for 8-bit's
    # input gradient).
    dequant = largest_linear * (FP32 if quantization == "8bit" else p) if quantization else 0
    step_transient = 2 * fp.largest * train_bytes  # sqrt(exp_avg_sq) and its scaled copy
    activations = kept + (ac["one_layer"] if gradient_checkpointing else 0)

    # The peak is the largest of these moments (activations alive, gradients alive, transient):
    phases = [
        # a layer's backward: the first's, or under checkpointing the last checkpointed layer's recomputation with
        # what the layers below it keep (all checkpointed: the first's), with every gradient written but the first
        # layer's (and, for full fine-tuning, the input embedding's, computed last: an upper bound for a later
        # layer); the optimizer step: every gradient
        (ac["below_last_recompute"] + ac["one_layer"], gradients - _first_layer_grads(a, fp, gradients, p),
         ac["layer_transient"] + dequant), (0, gradients, step_transient)]
    if fast:
        # the backbone returns (its cache still alive); the fused output layer + loss; its backward
        phases += [(backbone, 0, ac["cache"]), (backbone, 0, out_kept + out_forward), (kept, 0, out_backward)]
    else:
        phases += _stock_loss_phases(a, fp, kept, r.tokens, act, quantization, p, ac["cache"])
    alive_act, alive_grad, overhead = max(phases, key=lambda ph: sum(ph))
    if fast and (alive_act, overhead) == (backbone, out_kept + out_forward):
        alive_act, overhead = kept, out_forward  # what the fused head keeps is an activation
    freed = (alive_act - activations) + (alive_grad - gradients)
    return _totals(config, a, precision, quantization, n_total, n_train, dict(
        runtime=RUNTIME, weights=weights, trainable_weights=trainable_weights, gradients=gradients,
        optimizer=optimizer, activations=activations, overhead=overhead, freed_before_peak=freed,
        quantisation_savings=n_total * p - base_weights if quantization else 0))


def _totals(config, a, precision, quantization, n_total, n_train, parts: dict) -> dict:
    out = {k: int(round(val)) for k, val in parts.items()}
    out["training"] = sum(out[k] for k in SUMMED)
    out["tensors"] = out["training"] - out["runtime"]
    out["loading"] = int(_loading_peak(config, a, precision, quantization, parts["weights"]))
    out["total"] = max(out["training"], out["loading"])
    out["trainable_params"] = n_train
    out["total_params"] = n_total
    return out
