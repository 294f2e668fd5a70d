"""TLS for calls upstream: the system's roots (SSL_CERT_FILE included) plus --ca-file's."""

from __future__ import annotations

import ssl
from pathlib import Path

from credsidecar.errors import ConfigError

__all__ = ["client_context"]


def client_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """A client context trusting the system's roots and, when given, the PEM certificates in
    `ca_file` (a private CA, the sandbox's). Reads the file: call it off the event loop."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--ca-file {ca_file}: cannot load CA certificates ({exc}); give a readable "
                "file of PEM certificates"
            ) from exc
    return context
