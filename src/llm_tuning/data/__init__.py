"""Data side of the pipeline: formats (loading + validation), templates, tokenisation, collation, caching, sampling."""

import os

# The bundled Chinese sample: 100 original alpaca records and 8 multi-turn ones (alpaca system/history and sharegpt) (the demo's and the tests' default data).
SAMPLE_DATA = os.path.join(os.path.dirname(__file__), "samples", "zh_sample.json")
