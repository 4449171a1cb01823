"""Placement: a pure function from model config, quantization and inventory to a plan."""
