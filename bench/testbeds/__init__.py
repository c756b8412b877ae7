"""Testbeds with a known ground truth, shared by the benchmarks and the unit tests."""
