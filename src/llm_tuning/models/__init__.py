"""Models: loading (precision, quantisation, Bloom speed-ups), parameter counts, tiny models for experiments."""

from .load import (check_source, load_model, load_tokenizer, quantization_config, quiet_libraries, skip_bitsandbytes,
                   torch_dtype)
from .params import count_parameters, describe_parameters, is_prompt_learning
from .precision import PRECISION_DTYPES, PRECISIONS, QUANTIZATIONS
from .tiny import init_model, tiny_config, train_bpe_tokenizer

__all__ = ["PRECISION_DTYPES", "PRECISIONS", "QUANTIZATIONS", "check_source", "load_model", "load_tokenizer", "quantization_config",
           "quiet_libraries", "skip_bitsandbytes", "torch_dtype", "count_parameters", "describe_parameters",
           "is_prompt_learning", "init_model", "tiny_config", "train_bpe_tokenizer"]
