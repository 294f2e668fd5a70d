"""Shared fixtures: a clean environment and a controllable clock."""

from __future__ import annotations

import os

import pytest

# Variables from the developer's machine that would change what SDKs or the sidecar do.
_LEAKY_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "AZURE_", "IDENTITY_", "MSI_", "CREDSIDECAR_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name)


class FakeClock:
    """Wall-clock stand-in tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
