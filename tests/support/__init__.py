"""Helpers shared by test packages: machine-speed-aware deadlines and process handling.

Unit tests, end-to-end tests and benchmarks import from here, never from `tests/e2e`.
"""
