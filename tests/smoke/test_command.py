"""`credsidecar smoke` on the command line: flags, exit codes, the run-dir environment, and what
it loads (it runs at the start of every task and as a probe)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from credsidecar.cli import _parser, main
from credsidecar.jobenv import render
from credsidecar.smoke.runner import DEFAULT_AUDIENCE, DEFAULT_AZURE_RESOURCE, DEFAULT_TIMEOUT
from tests.smoke.fake_sidecar import FakeSidecar, ServerFactory


def test_the_flags_defaults_are_the_runners() -> None:
    args = _parser().parse_args(["smoke"])
    assert args.timeout == DEFAULT_TIMEOUT
    assert args.audience == DEFAULT_AUDIENCE
    assert args.azure_resource == DEFAULT_AZURE_RESOURCE
    assert args.json is False
    assert args.run_dir is None


def test_nothing_to_check_exits_2_and_says_how_to_get_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["smoke"]) == 2
    err = capsys.readouterr().err
    assert "no credsidecar endpoint is configured" in err
    assert 'eval "$(credsidecar env)"' in err


@pytest.mark.parametrize("flags", [["--timeout", "0"], ["--timeout", "-1"], ["--audience", ""]])
def test_bad_flags_exit_2_with_a_message(flags: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["smoke", *flags]) == 2
    assert "must be" in capsys.readouterr().err


def test_a_run_dir_without_a_ready_sidecar_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    assert main(["smoke", "--run-dir", str(run_dir)]) == 1
    assert "no ready sidecar uses run directory" in capsys.readouterr().err


async def test_run_dir_checks_the_environment_the_sidecar_wrote(
    aiohttp_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeSidecar()
    server: TestServer = await aiohttp_server(fake.app())
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    exports = fake.env(str(server.make_url("")).rstrip("/"), run_dir)
    fd = os.open(run_dir / "env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, render(exports, ["AWS_PROFILE"]).encode())
    os.close(fd)
    code = await asyncio.to_thread(main, ["smoke", "--json", "--run-dir", str(run_dir)])
    body = json.loads(capsys.readouterr().out)
    assert code == 0, body
    assert body["ok"] is True
    assert {c["result"] for c in body["checks"]} == {"ok"}


def _loaded_after(*argv: str) -> set[str]:
    code = (
        "import json, sys\nfrom credsidecar.cli import main\n"
        f"code = main({list(argv)!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    clean = {"PATH": os.environ.get("PATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env=clean)  # fmt: skip
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_smoke_loads_no_sdk_nor_asyncio_nor_aiohttp() -> None:
    loaded = _loaded_after("smoke", "--json")
    heavy = {"boto3", "botocore", "google", "azure", "aiohttp", "asyncio", "joserfc",
             "cryptography"}  # fmt: skip
    assert loaded.isdisjoint(heavy), sorted(loaded & heavy)
