"""`main.py report`: reads run folders only (metrics.json, predictions.jsonl, hparams.yaml, config.yaml, TensorBoard
events), no model.

runs (test runs, their fit runs, newest per seed) and events (TensorBoard scalars) load; stats (intervals, paired
tests) and results (per-experiment numbers, comparisons, hyperparameters) and sweeps (sweep points) compute; tables,
document (summary.md), records (summary.json) and figures write; command is the entry point.
"""
