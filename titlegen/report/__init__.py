"""`main.py report`: reads run folders only (metrics.json, predictions.jsonl, TensorBoard events), no model."""
