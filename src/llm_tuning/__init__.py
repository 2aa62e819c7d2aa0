"""llm-tuning: parameter-efficient fine-tuning of causal language models, method by method.

The package is laid out as the pipeline it runs, one floor a package, each importing only the floors below
(docs/architecture.md; import-linter's contracts in pyproject.toml hold it):
cli -> demo -> lab -> infer -> train -> evaluate -> memory -> config -> methods -> models -> data -> options
-> hub / log / paths -> errors.
Heavy libraries (torch, transformers, peft) are imported only where used, so
that `llm-tuning --help` and input validation stay fast.
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: F401
