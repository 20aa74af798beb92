"""The study's data: reading files, splits, prompts, tokenization, batches, training order, and the DataModule.

Imports nothing from `titlegen.model` or `titlegen.perf` (checked by import-linter): the data pipeline loads and
runs without a model.
"""
