"""Loss on response tokens only, without projecting the other positions onto the vocabulary.

The output layer is the largest matrix of a small or vocabulary-heavy model (Chinese-LLaMA-2's 55,296 x
hidden), and the stock causal-LM forward multiplies every position by it, prompt and padding included,
then throws the prompt's logits away (their labels are -100). Here the backbone runs once and only the
positions whose next token is learned go through the output layer and the cross-entropy. The value is the
same token-weighted mean the Trainer computes (sum over learned tokens / number of learned tokens in the
whole accumulated batch); a test checks loss and gradients against the stock forward.

Used for methods whose adapter lives inside the backbone's modules (full, BitFit, LoRA, IA3). Prompt,
P-tuning and prefix tuning feed extra inputs through PEFT's own forward, so they take the stock path.
"""

from __future__ import annotations

FAST_METHODS = ("full", "bitfit", "lora", "ia3")


def backbone_and_head(model):
    """(backbone, output layer) of a causal LM, looking through a PEFT wrapper; None if unknown."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or head is None:
        return None
    return body, head


def response_loss_sum(model, input_ids, attention_mask, labels):
    """(sum of cross-entropy over learned tokens, number of learned tokens)."""
    import torch.nn.functional as F

    body, head = backbone_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep], reduction="sum"), keep.sum()


def make_trainer_class():
    from transformers import Trainer

    class ResponseLogitsTrainer(Trainer):
        loss_is_scaled_for_ga = True  # we divide by the learned tokens of the whole accumulated batch ourselves

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or backbone_and_head(model) is None:
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                return loss
            total, n = response_loss_sum(model, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"])
            if num_items_in_batch is None:  # not counted by the Trainer: this micro-batch's share of the mean
                num_items_in_batch = n * self.current_gradient_accumulation_steps
            return total / num_items_in_batch

    return ResponseLogitsTrainer
