"""The job environment text and how it is written."""

from __future__ import annotations

import stat
from pathlib import Path

from credsidecar.config import SidecarConfig
from credsidecar.daemon import job_environment
from credsidecar.jobenv import AWS_UNSET, render, write_private_atomic
from tests.e2e.processes import apply_shell_env


def test_render_quotes_values_for_the_shell() -> None:
    text = render({"A": "it's $HOME `x`"}, ["B"])
    env = apply_shell_env(text, {"PATH": "/usr/bin:/bin", "B": "gone"})
    assert env["A"] == "it's $HOME `x`" and "B" not in env


def test_job_environment_exports_both_aws_paths_and_unsets_static_keys(tmp_path: Path) -> None:
    config = SidecarConfig(token_file=tmp_path / "t", aws_region="eu-west-1", run_dir=tmp_path)
    text = job_environment(config, "http://127.0.0.1:9", "s3cr3t", tmp_path / "secret")
    start = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AKIASTATIC", "AWS_PROFILE": "p",
             "AWS_ENDPOINT_URL": "http://elsewhere"}  # fmt: skip
    env = apply_shell_env(text, start)
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:9/v1/credentials/aws"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == "s3cr3t"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(tmp_path / "secret")
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == "http://127.0.0.1:9"  # no trailing slash
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == env["AWS_CONFIG_FILE"] == "/dev/null"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL"} & set(env)
    assert set(AWS_UNSET).isdisjoint(env)


def test_sandbox_endpoint_url_is_exported_when_configured(tmp_path: Path) -> None:
    config = SidecarConfig(token_file=tmp_path / "t", aws_endpoint_url="http://127.0.0.1:5",
                           keep_aws_config=True, run_dir=tmp_path)  # fmt: skip
    env = apply_shell_env(job_environment(config, "http://127.0.0.1:9", "s", tmp_path / "s"))
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5"
    assert "AWS_CONFIG_FILE" not in env


def test_private_files_are_0600_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "env"
    write_private_atomic(path, "one")
    write_private_atomic(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["env"]
