"""Whole pipelines over the stages: the demo, multi-seed comparisons and on-policy distillation."""
