"""credsidecar: per-user, credential-less cloud and HPC identity for pipeline jobs."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Resolved on first use: importlib.metadata costs ~80 ms, paid by every sidecar start.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("credsidecar")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0+unknown"
    raise AttributeError(name)
