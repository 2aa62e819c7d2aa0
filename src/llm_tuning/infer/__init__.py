"""Inference: load a base with its adapter, generate answers, merge an adapter into its base."""

from .generate import generate
from .load import load_for_inference, run_info
from .merge import merge

__all__ = ["generate", "load_for_inference", "merge", "run_info"]
