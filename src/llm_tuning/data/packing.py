"""Padding-free packing (`--packing`): the examples of a micro-batch concatenated into one row.

transformers' own `DataCollatorWithFlattening` does the concatenation: position ids restart at 0 for every
example, and the first label of every example is -100, so after the causal shift no example's first token is
predicted from the previous example's last one (the fused loss, train/fastloss.py, shifts the packed row as one
and needs nothing else). With no attention mask and packed position ids, transformers' mask functions
(masking_utils.find_packed_sequence_indices) keep SDPA / eager / flex attention inside each example (a
block-diagonal causal mask); flash attention takes the cumulative lengths the collator adds when asked.
Bloom has no position ids: its ALiBi attention gets the block-diagonal bias in models/speedups.py.

Why: padding costs compute in proportion to the spread of lengths in a batch (the alpaca data's lengths vary
several-fold), and one long row makes wider matrix products than several short ones.
"""

from __future__ import annotations

from ..errors import UserError

def check_packing(method, model_type: str | None = None, speedups: bool = True, attn: str | None = None):
    """One UserError line where packing cannot give the padded batch's loss; None where it can. `method`: the
    method object, which says whether packing applies to it (Method.packing: not where the method puts virtual
    tokens once in front of each row, as prompt, P-tuning and prefix tuning do)."""
    if not method.packing:
        raise UserError(f"--packing true does not apply to --method {method.name}: its virtual tokens are put once "
                        "in front of each row, so in a packed row only the first example would see them; drop "
                        "--packing")
    if model_type == "bloom" and not speedups:
        raise UserError("--packing true on Bloom needs --speedups true: the block-diagonal ALiBi bias lives in the "
                        "project's SDPA attention, transformers' eager Bloom attention has no packed mode")
    if model_type != "bloom" and attn not in (None, "sdpa", "eager", "flex_attention", "flash_attention_2",
                                              "flash_attention_3"):
        raise UserError(f"--packing true: attention implementation {attn!r} has no packed-sequence mode in "
                        "transformers; drop --packing")


def packing_collator(flash_attention: bool = False):
    """transformers' flattening collator: input_ids, labels, position_ids of shape [1, total tokens], and
    use_cache=False for the forward (see _no_cache). flash_attention: also the cumulative lengths flash attention
    reads (cu_seq_lens_q/k, max_length_q/k)."""
    from transformers import DataCollatorWithFlattening

    class PackingCollator(DataCollatorWithFlattening):
        def __call__(self, features, return_tensors=None, separator_id=None):
            return _no_cache(super().__call__(features, return_tensors, separator_id))

    return PackingCollator(return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=flash_attention)


def _no_cache(batch):
    """No KV cache in the forward: transformers reads packed position ids as separate examples only when no cache
    is given (masking_utils._preprocess_mask_arguments), and a model whose config says use_cache=True makes one;
    every example would then attend to those before it in the row (seen: logits off by 4.6 on a tiny Llama).
    Passed with the batch rather than set on the config, which a full fine-tune saves with the model."""
    batch["use_cache"] = False
    return batch
