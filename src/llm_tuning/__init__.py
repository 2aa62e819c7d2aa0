"""llm-tuning: parameter-efficient fine-tuning of causal language models, method by method.

The package is laid out as the pipeline it runs:
data (formats, templates, tokenisation, collation) -> models (loading, precision)
-> methods (one file per method) -> train -> infer (generate, merge) / evaluate.
Heavy libraries (torch, transformers, peft) are imported only where used, so
that `llm-tuning --help` and input validation stay fast.
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: F401
