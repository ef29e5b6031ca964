"""Benchmarks (run as scripts: ``PYTHONPATH=. python3 benchmarks/<name>.py --out DIR``)."""
