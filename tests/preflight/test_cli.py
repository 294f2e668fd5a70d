"""`credsidecar preflight`'s flags: their variables, where the storage endpoints come from, and
the refusals of bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from credsidecar.cli import _parser, main
from credsidecar.options import build
from credsidecar.preflight.cli import PREFLIGHT_OPTIONS, PreflightConfig


def config(argv: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> PreflightConfig:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _parser().parse_args(["preflight", *argv])
    return build(PreflightConfig, PREFLIGHT_OPTIONS, args)


def test_storage_endpoints_come_from_flags_else_the_variables_the_sdks_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = {"AWS_ENDPOINT_URL": "http://s3.local", "API_ENDPOINT_OVERRIDE": "http://gcs.local",
           "AWS_REGION": "eu-west-1"}  # fmt: skip
    endpoints = config([], monkeypatch).endpoints(job)
    assert (endpoints.s3_url, endpoints.gcs_url, endpoints.aws_region) == (
        "http://s3.local", "http://gcs.local", "eu-west-1")  # fmt: skip
    flagged = config(["--aws-endpoint-url", "http://s3.flag", "--gcs-endpoint-url",
                      "http://gcs.flag"], monkeypatch).endpoints(job)  # fmt: skip
    assert (flagged.s3_url, flagged.gcs_url) == ("http://s3.flag", "http://gcs.flag")
    public = config([], monkeypatch).endpoints({})
    assert (public.s3_url, public.gcs_url) == (None, "https://storage.googleapis.com")


def test_every_option_has_its_credsidecar_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    built = config([], monkeypatch, CREDSIDECAR_AZURE_BLOB_URL="https://127.0.0.1:1/sandbox",
                   CREDSIDECAR_NO_WRITE_PROBE="yes",
                   CREDSIDECAR_AWS_STS_ENDPOINT="http://sts")  # fmt: skip
    assert built.azure_blob_url == "https://127.0.0.1:1/sandbox"
    assert built.write_probe is False
    with_token = dataclasses.replace(built, token_file=Path("/run/token"))
    assert with_token.sidecar_config().aws_sts_endpoint == "http://sts"


def test_the_launch_token_is_never_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job may hold $CREDSIDECAR_TOKEN_FILE (for HPC logins): it stays a job-mode check."""
    monkeypatch.setenv("CREDSIDECAR_TOKEN_FILE", "/run/token")
    args = _parser().parse_args(["preflight", "s3://b/"])
    assert args.token_file is None


def test_a_path_preflight_cannot_check_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["preflight", "ftp://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credsidecar: 'ftp://bucket/x' is not a path preflight can check")
    assert "Traceback" not in err


def test_no_paths_exits_2_saying_how_to_give_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preflight"]) == 2
    assert "no paths to check" in capsys.readouterr().err


def test_an_unreadable_launch_token_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert main(["preflight", "s3://alice-data/", "--token-file", str(missing)]) == 2
    assert f"cannot read the launch token file {missing}" in capsys.readouterr().err
