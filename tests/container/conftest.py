"""Fixtures of the container tests: the image (built once per session) and the issuer and
sandbox on the host that containers reach over the host's network."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.container.podman import BUILD, TAG, Stack, podman, podman_env
from tests.support.processes import stop_process
from tests.support.stack import IssuerProcess, SandboxProcess
from tests.support.timing import scaled


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built once per session from a Debian root filesystem made here."""
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is not installed, and CI must run the container tests "
                        "(scripts/test installs it)")  # fmt: skip
        pytest.skip("podman is not installed (apt-get install podman runc mmdebstrap uidmap)")
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD), "--local-base", "--tag", TAG], env=podman_env(), capture_output=True,
        text=True, timeout=scaled(1800), check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"container/build failed: {done.stderr[-4000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    print(f"\nimage {TAG}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return TAG


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("container-stack")
    issuer = IssuerProcess(base / "issuer")
    try:
        issuer.start()
        sandbox = SandboxProcess(base, issuer.url)
        try:
            yield Stack(issuer, sandbox, base)
        finally:
            stop_process(sandbox.proc)
    finally:
        issuer.stop()
