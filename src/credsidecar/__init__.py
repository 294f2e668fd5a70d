"""credsidecar: per-user, credential-less cloud and HPC identity for pipeline jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("credsidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
