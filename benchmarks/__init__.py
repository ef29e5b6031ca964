"""Benchmarks of the kernels and the model, run from a checkout as modules:
``python -m benchmarks.<name> --out DIR`` (an installed package too, so tests import them)."""
