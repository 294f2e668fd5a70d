"""`credsidecar serve`: the sidecar's life from start to clean exit.

start: read the launch token -> build each cloud's exchanger and cache -> obtain the first
credentials -> listen on loopback -> write the job's env file (the job waits for it) -> serve
until SIGTERM/SIGINT, the watched job process ends, or `stop` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.clouds.aws import AwsCredentials, AwsExchanger, AwsSettings, role_session_name
from credsidecar.clouds.federation import DirectToken, IssuerExchange, TokenSupplier
from credsidecar.config import SidecarConfig
from credsidecar.endpoints.aws import CONTAINER_PATH, AwsEndpoints
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.errors import ConfigError
from credsidecar.jobenv import AWS_UNSET, render, write_private_atomic
from credsidecar.launch import (
    EnvTokenSource,
    FileTokenSource,
    LaunchClaims,
    StaticTokenSource,
    TokenSource,
    read_claims,
)
from credsidecar.server import create_sidecar_app

__all__ = ["RunningSidecar", "run_sidecar"]

log = logging.getLogger(__name__)

ENV_FILE_NAME = "env"
AWS_TOKEN_FILE_NAME = "aws-container-token"  # noqa: S105 - a file name
# How often the watched job PID is polled where pidfd is not available.
PID_POLL_SECONDS = 0.5


@dataclass
class RunningSidecar:
    url: str
    port: int
    env_text: str


def _token_source(config: SidecarConfig) -> TokenSource:
    if config.token_file is not None:
        return FileTokenSource(config.token_file)
    if config.direct_token_file is not None:
        return FileTokenSource(config.direct_token_file)
    if config.token_env is not None:
        return EnvTokenSource(config.token_env)
    return StaticTokenSource(sys.stdin.read(), "standard input")


def _aws_settings(config: SidecarConfig, claims: LaunchClaims | None) -> AwsSettings:
    descriptor = claims.identity("aws", config.aws_identity) if claims else None
    if claims is not None and config.aws_identity and descriptor is None:
        names = [d.get("name") for d in claims.identities.get("aws", [])]
        raise ConfigError(
            f"--aws-identity {config.aws_identity!r} is not in the launch token of {claims.who} "
            f"(it carries {names or 'no AWS identity'})"
        )
    role = config.aws_role_arn or (descriptor or {}).get("role_arn")
    if not role:
        who = claims.who if claims else "this launch"
        raise ConfigError(f"{who} has no AWS identity; pass --aws-role-arn or grant one")
    user = claims.user if claims else "direct"
    run = claims.run if claims else None
    return AwsSettings(
        role_arn=str(role),
        audience=config.aws_audience
        or str((descriptor or {}).get("audience", "sts.amazonaws.com")),
        identity_name=(descriptor or {}).get("name") if descriptor else None,
        session_name=role_session_name(user, run),
        duration=config.aws_duration,
        region=config.aws_region,
        sts_endpoint=config.aws_sts_endpoint,
        session_policy=(descriptor or {}).get("session_policy"),
    )


def job_environment(
    config: SidecarConfig, url: str, aws_secret: str | None, aws_secret_file: Path | None
) -> str:
    exports: dict[str, str] = {}
    unsets: list[str] = []
    if aws_secret is not None and aws_secret_file is not None:
        exports.update(
            {
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{url}{CONTAINER_PATH}",
                # Java reads the variable, botocore/Go/JS prefer the file: both hold the secret.
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": aws_secret,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(aws_secret_file),
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,  # no trailing slash
                "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4",
                "AWS_REGION": config.aws_region,
                "AWS_DEFAULT_REGION": config.aws_region,
            }
        )
        if not config.keep_aws_config:
            exports["AWS_CONFIG_FILE"] = os.devnull
            exports["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        if config.aws_endpoint_url:
            exports["AWS_ENDPOINT_URL"] = config.aws_endpoint_url
        unsets.extend(AWS_UNSET)
        if not config.aws_endpoint_url:
            unsets.append("AWS_ENDPOINT_URL")
    return render(exports, unsets)


async def _wait_for_pid_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass  # exists, owned by someone else
            await asyncio.sleep(PID_POLL_SECONDS)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(fd, done.set)
    try:
        await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _bind(host: str, port: int) -> socket.socket:
    """Binds before the app exists, so the Host allowlist knows the real port (no race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def _serving(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=1024).start()
        yield
    finally:
        await runner.cleanup()


async def run_sidecar(
    config: SidecarConfig,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[RunningSidecar] | None = None,
) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    audit = AuditLog.open(config.audit_log)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.chmod(0o700)
    source = _token_source(config)
    claims = None if config.direct else read_claims(await source.read())
    who = {"user": claims.user, "run": claims.run} if claims else {"user": "direct", "run": None}
    async with aiohttp.ClientSession() as session:
        supplier: TokenSupplier
        if claims is None:
            supplier = DirectToken(source)
        else:
            issuer = config.issuer_url or claims.issuer
            if not issuer:
                raise ConfigError("the launch token names no issuer (iss); pass --issuer-url")
            supplier = IssuerExchange(issuer, source, session)
        settings = _aws_settings(config, claims)
        exchanger = await asyncio.to_thread(
            AwsExchanger, settings, supplier, claims.who if claims else "the direct token"
        )

        def obtained(creds: AwsCredentials) -> None:
            audit.event("credentials.obtained", **who, role=creds.role_arn,
                        access_key_id=creds.access_key_id, expiry=int(creds.expires_at),
                        session=settings.session_name)  # fmt: skip
            log.info("AWS credentials %s for %s valid until %d", creds.access_key_id,
                     exchanger.description, int(creds.expires_at))  # fmt: skip

        cache: CredentialCache[AwsCredentials] = CredentialCache(
            f"AWS ({exchanger.description})", exchanger.fetch, on_new=obtained
        )
        aws_secret = secrets.token_urlsafe(32)
        secret_file = run_dir / AWS_TOKEN_FILE_NAME
        # No newline: botocore sends the file's bytes as the header value.
        write_private_atomic(secret_file, aws_secret)
        try:
            await cache.start(config.ready_timeout)
            sock = _bind(config.host, config.port)
            port = int(sock.getsockname()[1])
            hosts = allowed_hosts(port, ["169.254.169.254"] if config.link_local else [])
            guard = Guard(hosts, RefusalLog(audit), config.link_local)
            role_name = settings.role_arn.rsplit("/", 1)[-1]
            endpoints = AwsEndpoints(cache, aws_secret, audit, guard, role_name, who)
            app = create_sidecar_app(guard, endpoints, [cache])
            async with _serving(app, sock):
                url = f"http://{config.host}:{port}"
                env_text = job_environment(config, url, aws_secret, secret_file)
                write_private_atomic(run_dir / ENV_FILE_NAME, env_text)
                if config.env_file is not None:
                    write_private_atomic(config.env_file, env_text)
                log.info("sidecar ready at %s for %s", url, exchanger.description)
                audit.event("sidecar.ready", **who, url=url, role=settings.role_arn)
                if started is not None and not started.done():
                    started.set_result(RunningSidecar(url, port, env_text))
                waiters: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
                if config.exit_with is not None:
                    waiters.append(asyncio.create_task(_wait_for_pid_exit(config.exit_with)))
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(RuntimeError, ValueError):
                        loop.add_signal_handler(sig, stop.set)
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for task in waiters:
                    task.cancel()
                log.info("sidecar stopping")
        finally:
            await cache.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            for path in (run_dir / ENV_FILE_NAME, secret_file):
                path.unlink(missing_ok=True)
            audit.event("sidecar.stopped", **who)
            audit.close()
    return 0
