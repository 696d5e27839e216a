"""Benchmarks: one module per benchmark, a registry (registry.py) and shared helpers (base.py,
numbers.py). Importing this package imports nothing heavy; `registry.get(name)` loads one."""
