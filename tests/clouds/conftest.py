"""Exchanger tests run against the real issuer and the GCP and Azure sandbox stand-ins."""

from tests.sandbox.conftest import azure, gcp, http, https, issuer, sandbox_clock

__all__ = ["azure", "gcp", "http", "https", "issuer", "sandbox_clock"]
