"""Benchmarks: ``python -m bench`` prints figures; each module exposes ``main()``."""
