"""Benchmarks; run them from the repository root (see bench/token_endpoint.py)."""
