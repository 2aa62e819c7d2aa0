"""Training: the loop (loop.py) and what it is made of: run folder, callbacks, fused loss, checkpointing, guard."""

from .loop import TrainResult, train

__all__ = ["TrainResult", "train"]
