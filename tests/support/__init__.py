"""Helpers shared by the unit tests, the end-to-end tests and the benchmarks.

`processes` (start, await and always reap a process), `stack` (the issuer, sandbox and sidecar
as real processes), `jobenv` (a job's environment from `credsidecar env`), `clock` (the one
hand-moved clock), `ports`, `timing` (machine-speed-aware deadlines), `raw_http`. Everything
outside `tests/e2e` imports from here, never from `tests/e2e` (`test_boundaries.py` checks).
"""
