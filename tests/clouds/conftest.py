"""Exchanger tests run against the real issuer and the GCP sandbox stand-ins."""

from tests.sandbox.conftest import gcp, http, issuer, sandbox_clock

__all__ = ["gcp", "http", "issuer", "sandbox_clock"]
