"""podman for the container tests: the image under test, its user, the confinement they run
it with, and a `podman` that fails with podman's own message."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import IssuerProcess, SandboxProcess
from tests.support.timing import scaled

__all__ = ["BUILD", "CONFINED", "NO_HEALTHCHECK", "REPO", "TAG", "UID", "Stack", "for_container",
           "podman", "podman_env"]  # fmt: skip

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "container" / "build"
CONTAINERS_CONF = REPO / "container" / "test-containers.conf"
TAG = "localhost/credsidecar:test"
UID = 65532
# The confinement README.md and the deploy manifests ask for: no writable root, a private
# tmpfs for the run directory, no capabilities, no privilege gain.
CONFINED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]  # fmt: skip
# For one-off commands: podman would schedule the image's healthcheck with systemd timers.
NO_HEALTHCHECK = ["--no-healthcheck"]


def podman_env() -> dict[str, str]:
    """This environment, with podman's settings for these VMs unless the caller chose others."""
    return {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
    }


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True,
        timeout=scaled(timeout), check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def for_container(directory: Path, mode: int) -> Path:
    """A directory owned by the container's user (the sidecar refuses what it does not own)."""
    directory.mkdir(parents=True)
    os.chown(directory, UID, UID)
    directory.chmod(mode)
    return directory


@dataclass
class Stack:
    """The issuer and sandbox on the host (the `stack` fixture); `base` holds their files."""

    issuer: IssuerProcess
    sandbox: SandboxProcess
    base: Path
