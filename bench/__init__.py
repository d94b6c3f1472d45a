"""Benchmarks of the real pipeline (see bench/README.md). Not part of the installed package."""
