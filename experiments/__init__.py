"""Hydra entry points: comparisons, benchmarks, reports."""
