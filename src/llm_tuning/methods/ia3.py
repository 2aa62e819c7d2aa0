from .base import PeftMethod


class IA3(PeftMethod):
    """Learned per-channel scaling vectors on keys, values and the feed-forward input (PEFT's default targets)."""

    name = "ia3"
    mergeable = True
    default_lr = 1e-2

    def peft_config(self, model, cfg):
        from peft import IA3Config, TaskType

        kwargs = {}
        if cfg.target_modules:
            # With explicit targets, none is treated as feed-forward unless it is an MLP output projection.
            ff = [m for m in cfg.target_modules if m in ("down_proj", "dense_4h_to_h", "fc2", "c_proj", "w2")]
            kwargs = dict(target_modules=cfg.target_modules, feedforward_modules=ff)
        return IA3Config(task_type=TaskType.CAUSAL_LM, **kwargs)
