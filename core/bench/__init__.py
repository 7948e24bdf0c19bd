"""Benchmarks (``manet bench``): each measures the pipeline against its own ceiling."""
