"""A job's environment as a shell builds it from what `credsidecar env` prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.timing import scaled

__all__ = ["BIN", "apply_shell_env", "base_env"]

BIN = Path(sys.executable).parent


def base_env() -> dict[str, str]:
    """A job's starting environment: PATH and HOME only, so nothing from this machine leaks."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}  # fmt: skip


def apply_shell_env(script: str, start_env: dict[str, str] | None = None) -> dict[str, str]:
    """Runs the export/unset lines in a real shell and returns the resulting environment."""
    bash = shutil.which("bash") or "/bin/bash"
    done = subprocess.run(
        [bash, "-c", f"{script}\nenv -0"],
        env=start_env or base_env(), capture_output=True, check=True, timeout=scaled(30),
    )  # fmt: skip
    pairs = [item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item]
    env = {k.decode(): v.decode() for k, v in pairs}
    for noise in ("PWD", "SHLVL", "_", "OLDPWD"):
        env.pop(noise, None)
    return env
