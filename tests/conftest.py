"""Shared fixtures: a clean environment and a controllable clock."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator

import pytest
from blockbuster import blockbuster_ctx

from tests.support.clock import FakeClock
from tests.support.postgres import postgres_cluster as postgres_cluster  # fixture
from tests.support.postgres import postgres_url as postgres_url  # fixture

# Variables from the developer's machine that would change what SDKs or the sidecar do.
_LEAKY_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "AZURE_", "IDENTITY_", "MSI_", "CREDSIDECAR_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails an async test whose credsidecar code blocks the event loop (file, socket, sleep)."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with blockbuster_ctx(["credsidecar"]) as bb:
        # One short JSON line per event, line-buffered: the same trade-off as stdlib logging.
        for name in ("io.TextIOWrapper.write", "io.BufferedWriter.write", "os.write"):
            bb.functions[name].can_block_in("credsidecar/audit.py", "event")
        # The /proc/net/tcp fallback where sock_diag is unavailable: a procfs read (no disk),
        # once per connection; a thread per new connection would cost more than the read.
        bb.functions["io.BufferedReader.read"].can_block_in(
            "credsidecar/endpoints/peers.py", "_read_table"
        )
        yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
