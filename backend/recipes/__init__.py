"""Experiments built on the engine: fine-tuning with frozen units, safety alignment, the paper's tables (reproduce)
and role transfer between runs."""
