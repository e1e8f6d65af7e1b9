"""Shipped so packaging includes the metric script; `evaluate` loads it by path, not by import."""
