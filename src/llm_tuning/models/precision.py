"""The one precision table: the dtypes a base may be loaded in, and the quantisations bitsandbytes gives it.

Declared here, below the options that offer them (--precision, --quantization), the loading that applies them
(load.py) and the memory estimate that prices them."""

# option value -> (torch dtype name, bytes per element)
PRECISION_DTYPES = {"fp32": ("float32", 4), "bf16": ("bfloat16", 2), "fp16": ("float16", 2)}
PRECISIONS = tuple(PRECISION_DTYPES)
QUANTIZATIONS = ("8bit", "4bit")
