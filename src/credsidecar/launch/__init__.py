"""Launch tokens on the sidecar side: where they come from and what they say."""

from credsidecar.launch.claims import LaunchClaims, read_claims
from credsidecar.launch.sources import (
    EnvTokenSource,
    FileTokenSource,
    StaticTokenSource,
    TokenSource,
)

__all__ = [
    "EnvTokenSource",
    "FileTokenSource",
    "LaunchClaims",
    "StaticTokenSource",
    "TokenSource",
    "read_claims",
]
