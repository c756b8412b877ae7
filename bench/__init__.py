"""Benchmarks of the pack: testbeds, baselines and peers, and the report."""
