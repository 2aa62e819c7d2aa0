"""Batch collation: pad on the right, labels padded with -100, attention mask from lengths."""


def make_collator(tokenizer, pad_to_multiple_of=None):
    # The library collator does exactly this; it pads on tokenizer.padding_side (set to "right" by guard.preflight).
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of)
