"""Data side of the pipeline: formats (loading + validation), templates, tokenisation, collation."""
