"""Benchmarks of ft_callbacks against the built-ins and the reference libraries: `python -m benchmarks`."""
