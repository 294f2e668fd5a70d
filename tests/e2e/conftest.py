"""The issuer and sandbox processes every end-to-end module runs its sidecars against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import stop_process
from tests.support.stack import IssuerProcess, SandboxProcess


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[IssuerProcess, SandboxProcess]]:
    """One issuer and one sandbox per test module (each module may restart the issuer); a
    module's SANDBOX_ARGS go to `credsidecar sandbox`. Both are stopped and reaped however the
    module ends, a failed start included."""
    base = tmp_path_factory.mktemp("stack")
    issuer = IssuerProcess(base / "issuer")
    try:
        issuer.start()
        sandbox = SandboxProcess(base, issuer.url, *getattr(request.module, "SANDBOX_ARGS", ()))
        try:
            yield issuer, sandbox
        finally:
            stop_process(sandbox.proc)
    finally:
        issuer.stop()
