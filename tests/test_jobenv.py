"""The job environment text and how it is written."""

from __future__ import annotations

import asyncio
import io
import stat
from pathlib import Path

import aiohttp

from credsidecar.audit import AuditLog
from credsidecar.config import SidecarConfig
from credsidecar.daemon import job_environment
from credsidecar.endpoints.guards import RefusalLog
from credsidecar.jobenv import AWS_UNSET, render, write_private_atomic
from credsidecar.launch import StaticTokenSource
from credsidecar.launch.exchange import DirectToken
from credsidecar.providers import Context, build_aws
from tests.support.jobenv import apply_shell_env


def test_render_quotes_values_for_the_shell() -> None:
    text = render({"A": "it's $HOME `x`"}, ["B"])
    env = apply_shell_env(text, {"PATH": "/usr/bin:/bin", "B": "gone"})
    assert env["A"] == "it's $HOME `x`" and "B" not in env


async def aws_env(
    tmp_path: Path, start: dict[str, str] | None = None, **config: object
) -> dict[str, str]:
    """The job environment `build_aws` contributes, applied in a real shell."""
    settings = SidecarConfig(
        direct_token_file=tmp_path / "t",
        aws_role_arn="arn:aws:iam::123456789012:role/alice-data",
        run_dir=tmp_path,
        **config,  # type: ignore[arg-type]
    )
    async with aiohttp.ClientSession() as session:
        audit = AuditLog(io.StringIO())
        supplier = DirectToken(StaticTokenSource("a.b.c"))
        who: dict[str, str | None] = {"user": "direct", "run": None}
        url = "http://127.0.0.1:9"
        ctx = Context(settings, None, supplier, session, audit, who, url, frozenset(),
                      RefusalLog(audit))  # fmt: skip
        provider = await build_aws(ctx)
    assert provider is not None
    text = job_environment([provider])
    return await asyncio.to_thread(apply_shell_env, text, start)


async def test_aws_job_environment_exports_both_paths_and_unsets_static_keys(
    tmp_path: Path,
) -> None:
    start = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AKIASTATIC", "AWS_PROFILE": "p",
             "AWS_ENDPOINT_URL": "http://elsewhere"}  # fmt: skip
    env = await aws_env(tmp_path, start, aws_region="eu-west-1")
    secret = (tmp_path / "aws-container-token").read_text()
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:9/v1/credentials/aws"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == secret
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(tmp_path / "aws-container-token")
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == "http://127.0.0.1:9"  # no trailing slash
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == env["AWS_CONFIG_FILE"] == "/dev/null"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL"} & set(env)
    assert set(AWS_UNSET).isdisjoint(env)


async def test_sandbox_endpoint_url_is_exported_when_configured(tmp_path: Path) -> None:
    env = await aws_env(tmp_path, aws_endpoint_url="http://127.0.0.1:5", keep_aws_config=True)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5"
    assert "AWS_CONFIG_FILE" not in env


def test_private_files_are_0600_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "env"
    write_private_atomic(path, "one")
    write_private_atomic(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["env"]
