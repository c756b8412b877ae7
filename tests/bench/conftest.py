"""Fixtures of the benchmark code's tests: testbed 1's mixture and clean samples, the same ones the unit tests use
(defined once, in tests/unit/conftest.py)."""

from tests.unit.conftest import mixture, x0

__all__ = ["mixture", "x0"]
