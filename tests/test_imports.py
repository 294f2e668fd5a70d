"""What each entry point loads, checked in a fresh interpreter.

`credsidecar env` runs at the start of every job and `--help` at every typo; the endpoints and
the config must not need a cloud SDK. Each check runs `python -c` and reads `sys.modules` at the
end, so nothing this test process already imported can hide a regression.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SDKS = ("boto3", "botocore", "google", "azure", "asyncssh")
# What a command that serves nothing and verifies nothing must not pay for either.
HEAVY = (*SDKS, "aiohttp", "joserfc", "cryptography", "asyncio")


def loaded_after(code: str) -> set[str]:
    """The top-level packages loaded once `code` has run in a fresh interpreter."""
    report = "import json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_endpoints_and_config_load_no_cloud_sdk() -> None:
    loaded = loaded_after(
        "import credsidecar.endpoints.aws, credsidecar.endpoints.gcp, "
        "credsidecar.endpoints.azure, credsidecar.config"
    )
    assert loaded.isdisjoint(SDKS), sorted(loaded & set(SDKS))


def test_building_the_cli_parser_loads_no_sdk_nor_aiohttp() -> None:
    loaded = loaded_after("from credsidecar.cli import _parser\n_parser()")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_credsidecar_env_loads_no_sdk_nor_aiohttp(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    fd = os.open(run_dir / "env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"export AWS_REGION=eu-west-1\n")
    os.close(fd)
    code = (
        "import sys\nfrom credsidecar.cli import main\n"
        f"assert main(['env', '--run-dir', {str(run_dir)!r}]) == 0\n"
    )
    loaded = loaded_after(code)
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_sidecar_loads_no_cloud_sdk_nor_jose_library() -> None:
    """AWS is called over the STS Query API (boto3 belongs to the sandbox only), and the
    launch token's claims are read without joserfc (the sidecar verifies nothing itself)."""
    loaded = loaded_after(
        "import credsidecar.daemon, credsidecar.clouds.aws, credsidecar.clouds.gcp, "
        "credsidecar.clouds.azure\n"
        "from credsidecar.launch import read_claims\n"
        "read_claims('eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.sig')"
    )
    unwanted = {*SDKS, "joserfc", "cryptography"}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)
