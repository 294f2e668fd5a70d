"""One slowness factor that scales every deadline in the tests.

A deadline only bounds how long a failing test takes to fail: a passing test never waits for
one, so deadlines are generous and multiplied by `SLOWNESS`, the largest of
- `CREDSIDECAR_TEST_TIMEOUT_FACTOR` (default 1; `scripts/stress-ci` sets 4),
- this interpreter's time for a fixed CPU loop against a reference (slow hardware, or CPU
  taken by other processes while it ran),
- the load average per CPU (other processes keeping every core busy),
capped at `MAX_SLOWNESS`. It is computed once, when this module is first imported: that is at
collection, before the autouse fixture clears `CREDSIDECAR_*` variables for each test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

__all__ = ["FACTOR_VARIABLE", "SLOWNESS", "scaled", "slowness"]

FACTOR_VARIABLE = "CREDSIDECAR_TEST_TIMEOUT_FACTOR"
# The reference loop: 200,000 iterations take ~15 ms on a 2024 laptop core; a machine up to
# twice as slow still counts as normal speed.
_SPIN_ITERATIONS = 200_000
_REFERENCE_SECONDS = 0.030
# Beyond this a machine is too slow for the end-to-end tests to mean anything.
MAX_SLOWNESS = 10.0


def _spin_seconds() -> float:
    started = time.perf_counter()
    x = 0
    for i in range(_SPIN_ITERATIONS):
        x ^= i * i
    return time.perf_counter() - started


def _requested(environ: Mapping[str, str]) -> float:
    raw = environ.get(FACTOR_VARIABLE, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = 0.0
    if not 0 < factor <= 1000:  # also refuses nan and inf
        raise ValueError(
            f"{FACTOR_VARIABLE}={raw!r} is not a positive number of at most 1000; set it to "
            "how many times slower than usual this machine runs (e.g. 4) or unset it"
        )
    return factor


def _load_per_cpu() -> float:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return 0.0


def slowness(environ: Mapping[str, str] = os.environ) -> float:
    """How many times longer than usual things may take here (>= 1); see the module doc."""
    measured = min(MAX_SLOWNESS, max(_spin_seconds() / _REFERENCE_SECONDS, _load_per_cpu()))
    return max(1.0, _requested(environ), measured)


SLOWNESS = slowness()


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on a machine of usual speed, stretched to this one."""
    return seconds * SLOWNESS
