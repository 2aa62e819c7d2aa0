"""Loss on response tokens only, without projecting the other positions onto the vocabulary.

The output layer is the largest matrix of a small or vocabulary-heavy model (Chinese-LLaMA-2's 55,296 x
hidden), and the stock causal-LM forward multiplies every position by it, prompt and padding included,
then throws the prompt's logits away (their labels are -100). Here the backbone runs once and only the
positions whose next token is learned go through the output layer and the cross-entropy. The value is the
same token-weighted mean the Trainer computes (sum over learned tokens / number of learned tokens in the
whole accumulated batch); a test checks loss and gradients against the stock forward.

The projection and the cross-entropy are fused (_LinearCrossEntropy): the gradient is formed in the forward,
piece by piece, and folded into the hidden-state (and, when it trains, the output-layer) gradient at once, so
the [tokens x vocabulary] logits never exist whole; with a 55k vocabulary and most tokens learned they would
otherwise be the largest tensor of the step, held three times over (logits, log-softmax, gradient). The pieces
are vocabulary blocks over all rows when the output layer does not train (_by_vocabulary_blocks), row chunks
over the whole vocabulary when it does or in half precision (_by_row_chunks). No pip-installable library does
this for CPU training (Liger's fused kernel is Triton, GPU-only), hence this small autograd function.

Used for every method. Full, BitFit, LoRA and IA3 live inside the backbone's modules: the backbone runs alone.
Prompt, P-tuning and prefix tuning feed extra inputs through PEFT's own forward: that forward runs with the
output layer swapped for the identity, and the virtual positions are dropped.
"""

from __future__ import annotations


from ..memory import loss_chunks  # read at each call: a test may set smaller blocks and chunks

_TINY = 1e-30  # below this a softmax probability is near fp32's smallest normal number (1.2e-38): digits lost


def backbone_and_head(model):
    """(backbone, output layer) of a causal LM, looking through a PEFT wrapper; None if unknown."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or type(head) is not torch.nn.Linear:  # e.g. an adapter on the head itself
        return None
    return body, head


def _make_function():
    import torch

    class _LinearCrossEntropy(torch.autograd.Function):
        """sum_i CE(hidden_i @ W^T + b, target_i), with its gradients computed chunk by chunk in the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, target):
            n = hidden.shape[0]
            grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
            # full fine-tuning's output-layer gradient: written by the first chunk below (zeros if there is none)
            grad_w = (torch.empty_like if n else torch.zeros_like)(weight, dtype=torch.float32) if weight.requires_grad else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
            fp32 = hidden.dtype == torch.float32 and weight.dtype == torch.float32
            if fp32 and grad_w is None and grad_b is None and n:  # every method but full fine-tuning, in fp32
                total = _by_vocabulary_blocks(hidden, weight, bias, target, grad_h)
            else:
                total = _by_row_chunks(hidden, weight, bias, target, grad_h, grad_w, grad_b)
            ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
            ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
            ctx.used = False
            return total

        @staticmethod
        def backward(ctx, grad_out):
            # Scaled in place and handed over: autograd drops its saved copy right after this returns, so the
            # tensor becomes the .grad without a copy. Full fine-tuning's [vocab x hidden] gradient was copied
            # once a step before (50 ms each for 55,296 x 512). In place means once only:
            if ctx.used:
                raise RuntimeError("the fused response loss supports one backward pass per forward")
            ctx.used = True
            saved = ctx.saved_tensors
            grads = [None, None, None]
            for i in range(3):
                if ctx.has[i]:
                    g = saved[i]
                    grads[i] = g.mul_(grad_out) if g.dtype == ctx.dtypes[i] else (g * grad_out).to(ctx.dtypes[i])
            return grads[0], grads[1], grads[2], None

    return _LinearCrossEntropy


def _by_row_chunks(hidden, weight, bias, target, grad_h, grad_w, grad_b):
    """sum of CE over rows, with the gradients written into grad_h / grad_w / grad_b (those not None), in row
    chunks of the whole vocabulary: the path of full fine-tuning (it needs the output layer's gradient, hence
    each chunk's normalised softmax before the next), of half precision, and of rows the blocks cannot take."""
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    rows = loss_chunks.chunk_rows(n, vocab)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    fp32 = hidden.dtype == torch.float32 and weight.dtype == torch.float32
    # One [chunk x vocabulary] buffer for every chunk and every step (a fresh one costs page faults: glibc
    # maps a block this large anew each time and the first write to each page traps), worked on in place
    # after the matmul: softmax (one row-wise kernel whose rows stay in cache), minus one-hot.
    # The loss is -log of the target's probability: no second exp pass over the chunk, as log-softmax
    # followed by exp would need (measured: 0.40 -> 0.26 s in profiles of a 13-14 s epoch).
    buf = _logits_buffer(rows, vocab, hidden.device) if fp32 else None
    chunk = max(1, rows)
    for s in range(0, n, chunk):
        h, t = hidden[s:s + chunk], target[s:s + chunk]
        logits = torch.mm(h, weight.t(), out=buf[:len(h)]) if fp32 else (h @ weight.t()).float()
        if bias is not None:
            logits += bias.float()
        g = torch.softmax(logits, dim=-1, out=logits)
        rows = torch.arange(len(t), device=t.device)
        p = g[rows, t]
        logp = p.log()
        far = p < _TINY  # a probability this small has lost digits in fp32: that row's loss exactly
        if far.any():
            exact = torch.log_softmax(h[far].float() @ weight.t().float() + (bias.float() if bias is not None else 0), -1)
            logp = logp.masked_scatter(far, exact[torch.arange(len(exact), device=t.device), t[far]])
        total -= logp.sum()
        g[rows, t] -= 1.0  # d(sum CE)/d(logits)
        if grad_h is not None:
            if fp32:
                torch.mm(g, weight, out=grad_h[s:s + chunk])
            else:
                grad_h[s:s + chunk] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
        if grad_w is not None:  # full fine-tuning: the first chunk writes (beta=0 ignores the empty
            # buffer's contents), the others add in place: no zero fill, no [vocab x hidden] temporary
            grad_w.addmm_(g.t(), h.float(), beta=0.0 if s == 0 else 1.0)
        if grad_b is not None:
            grad_b += g.sum(0)
    return total


def _by_vocabulary_blocks(hidden, weight, bias, target, grad_h):
    """sum of CE over rows, and d/d(hidden) into grad_h (if not None), for an output layer that does not train
    (fp32): all rows at once against VOCAB_BLOCK vocabulary entries at a time, with no [rows x vocabulary] logits.

    Each block's logits are shifted by a per-row constant c and exponentiated in place; their row sums add up
    to s = sum_v exp(logit_v - c) and the block, unnormalised, is multiplied into grad_h at once. At the end
    grad_h = grad_h / s - W[target] (the softmax's 1/s is a per-row factor, so it can come last) and the loss
    is log s + c - logit_target: the loss and gradient of the row-chunk path (to rounding) for any c that keeps
    the exponentials finite; c = the larger of the row's target logit and its largest logit in the
    first block. That needs no pass over the row to find its maximum (what made a vocabulary split with
    per-part log-sum-exp merges slower: benchmarks/README.md), and s >= 1 since c is one of the row's logits. A
    row whose largest logit is ~80 above c would overflow: its s is not finite, and such rows are redone by row
    chunks.
    Why: the output layer's products get every learned row of the batch at once (a wider product) and their
    block stays in cache for the exponentials. Measured against row chunks of at most 2^24 logits, this
    machine, 55,296 x 512, best of 5: 150 rows 61 vs 58 ms, 450 rows 159 vs 174, 900 rows 291 vs 333, 1200
    rows 384 vs 454; and the 64 MiB logits buffer is not needed."""
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    rows = loss_chunks.block_rows(n)  # n >= 1 here
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    w_t = weight[target]
    logit_t = (hidden * w_t).sum(1)
    if bias is not None:
        logit_t += bias[target]
    redo = []
    for r in range(0, n, rows):
        h, lt = hidden[r:r + rows], logit_t[r:r + rows]
        g = grad_h[r:r + rows] if grad_h is not None else None
        s = torch.zeros(len(h), dtype=torch.float32, device=h.device)
        c = None
        block = loss_chunks.VOCAB_BLOCK
        for v in range(0, vocab, block):
            w = weight[v:v + block]
            e = torch.mm(h, w.t(), out=_logits_buffer(len(h), len(w), h.device))
            if bias is not None:
                e += bias[v:v + block]
            if c is None:
                c = torch.maximum(e.amax(1), lt).unsqueeze(1)
            s += e.sub_(c).exp_().sum(1)
            if g is not None:  # the first block writes (beta=0 ignores the empty buffer's contents)
                g.addmm_(e, w, beta=0.0 if v == 0 else 1.0)
        loss = s.log() + c.squeeze(1) - lt
        ok = torch.isfinite(loss)
        total += loss[ok].sum()
        if g is not None:
            g.div_(s.unsqueeze(1)).sub_(w_t[r:r + rows])
        if not ok.all():
            redo.append(r + (~ok).nonzero().squeeze(1))
    if redo:  # overflowed rows (or non-finite hidden states): their loss and gradient by row chunks
        idx = torch.cat(redo)
        sub = torch.empty(len(idx), hidden.shape[1], dtype=hidden.dtype, device=hidden.device) if grad_h is not None else None
        total += _by_row_chunks(hidden[idx], weight, bias, target[idx], sub, None, None)
        if sub is not None:
            grad_h[idx] = sub
    return total


_FN = None
_BUFFERS = {}  # device -> flat fp32 tensor: the logits buffer, kept from one step to the next


def _logits_buffer(rows, vocab, device):
    """A [rows x vocab] fp32 view of a buffer kept between calls (grown when a bigger one is needed).
    Kept because the matmul that first writes a fresh buffer is slowed by its page faults (106 -> 98 ms for 450
    rows of a 55k vocabulary in two chunks); one LoRA epoch of the throughput benchmark, in-process, 8 alternating
    pairs: 1412 -> 1437 tokens/s (+1.8 %)."""
    import torch

    flat = _BUFFERS.get(device)
    if flat is None or flat.numel() < rows * vocab:
        _BUFFERS.pop(device, None)  # the old one is freed before the new one is made
        flat = _BUFFERS[device] = torch.empty(rows * vocab, dtype=torch.float32, device=device)
    return flat[: rows * vocab].view(rows, vocab)


def release_buffers():
    """Free the kept logits buffer (after training: the process may go on to evaluate or generate)."""
    _BUFFERS.clear()


def linear_cross_entropy_sum(hidden, head, target):
    global _FN
    if _FN is None:
        _FN = _make_function()
    return _FN.apply(hidden, head.weight, head.bias, target)


def _last_hidden_states(model, body, input_ids, attention_mask, position_ids=None):
    from ..models.params import is_prompt_learning

    # use_cache=False: a training forward has no use for a KV cache, which would keep every layer's keys and values
    # until it returns (prefix tuning's prefix is passed in as a cache of its own and is used all the same)
    if not is_prompt_learning(model):
        # position_ids: a packed row (--packing, data/packing.py); the examples' first labels are -100, so the
        # one shift below never predicts an example's first token from the previous example's last
        extra = {} if position_ids is None else {"position_ids": position_ids}
        return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).last_hidden_state
    # Prompt, P-tuning and prefix tuning: PEFT's own forward adds the virtual tokens (or the prefix keys and
    # values), so it runs as usual, with the output layer swapped for the identity for this one call: its
    # "logits" are then the last hidden states. Virtual-token positions come first and learn nothing: dropped.
    import torch

    inner = model.get_base_model()
    head = inner.get_output_embeddings()
    inner.set_output_embeddings(torch.nn.Identity())
    try:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        inner.set_output_embeddings(head)
    return hidden[:, hidden.shape[1] - input_ids.shape[1]:]


def response_loss_sum(model, input_ids, attention_mask, labels, position_ids=None, linear_ce=None):
    """(sum of cross-entropy over learned tokens, number of learned tokens). linear_ce: the fused output layer +
    loss (default this module's CPU one; on CUDA Liger's, train/kernels.py)."""
    body, head = backbone_and_head(model)
    hidden = _last_hidden_states(model, body, input_ids, attention_mask, position_ids)
    target = labels[:, 1:]
    keep = target != -100
    return (linear_ce or linear_cross_entropy_sum)(hidden[:, :-1][keep], head, target[keep]), keep.sum()
