"""Measurements of the pipeline against the usual way of doing the same work (python -m benchmarks.compare)."""
