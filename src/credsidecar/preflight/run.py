"""One preflight: every target checked with the run's default identity for its cloud and, where
that fails, with each other identity granted to the launch, so the report can say which one
would work.

Credentials are obtained once per identity (single-flight: the targets of one cloud share
them); checks run concurrently, at most `MAX_CONCURRENT_CHECKS` at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from credsidecar.errors import ConfigError, CredsidecarError
from credsidecar.launch import read_claims
from credsidecar.preflight.credentials import (
    CLOUD_NAMES,
    CloudIdentity,
    CredentialSource,
    JobCredentials,
    LaunchCredentials,
    Obtained,
)
from credsidecar.preflight.model import CloudEndpoints, Outcome, Target, Verdict
from credsidecar.preflight.probe import probe_session
from credsidecar.tls import client_context

if TYPE_CHECKING:
    from credsidecar.preflight.cli import PreflightConfig

__all__ = ["Check", "Finding", "Preflight", "Report", "cloud_checks", "run_preflight"]

# Checks are a few small requests each (botocore's in threads): enough at once that 20 paths
# take about as long as the slowest cloud, few enough not to hammer an API or the thread pool.
MAX_CONCURRENT_CHECKS = 8
# In a job, the launch token `credsidecar hpc` commands use (HPC logins need it; the clouds'
# checks there use only the sidecar's endpoints).
TOKEN_FILE_VARIABLE = "CREDSIDECAR_TOKEN_FILE"  # noqa: S105 - a variable's name
# Outcomes worth trying the launch's other identities for: a refusal, or no credential at all.
_TRY_OTHERS = frozenset({Outcome.DENIED, Outcome.NO_CREDENTIALS})

Check = Callable[[Target, Obtained], Awaitable[Verdict]]
HpcCheck = Callable[[Target], Awaitable[Verdict]]


@dataclass(frozen=True)
class Finding:
    """A target's verdict with the default identity, and what the other identities showed."""

    verdict: Verdict
    alternatives: tuple[CloudIdentity, ...] = ()  # other granted identities that passed
    others_checked: tuple[CloudIdentity, ...] = ()  # every other identity tried
    identity: CloudIdentity | None = None  # the identity the verdict is for (None: none)


@dataclass(frozen=True)
class Report:
    where: str  # where the credentials came from (in the job / before launch)
    user: str | None
    run: str | None
    findings: tuple[Finding, ...]
    write_probe: bool = True
    job: bool = False  # in the job: other AWS/GCP identities are not visible from there


def cloud_checks(
    endpoints: CloudEndpoints, write_probe: bool, session: aiohttp.ClientSession | None = None
) -> dict[str, Check]:
    """The per-cloud checks (preflight/aws.py, gcp.py, azure.py), each imported when first
    used: a run with only S3 paths never loads the Google or Azure code. GCP and Azure share
    `session` (one connection pool, one TLS handshake per host)."""

    async def aws(target: Target, got: Obtained) -> Verdict:
        from credsidecar.preflight.aws import check_aws

        if got.aws is None:  # cannot happen: AWS identities yield AWS credentials
            raise ConfigError(f"no AWS credentials were obtained for {got.identity.label}")
        return await check_aws(target, got.aws, got.identity.label, endpoints,
                               write_probe=write_probe)  # fmt: skip

    async def gcp(target: Target, got: Obtained) -> Verdict:
        from credsidecar.preflight.gcp import check_gcp

        return await check_gcp(target, got.token or "", got.identity.label, endpoints,
                               session=session)  # fmt: skip

    async def azure(target: Target, got: Obtained) -> Verdict:
        from credsidecar.preflight.azure import check_azure

        return await check_azure(target, got.token or "", got.identity.label, endpoints,
                                 write_probe=write_probe, session=session)  # fmt: skip

    return {"aws": aws, "gcp": gcp, "azure": azure}


async def hpc_without_token(target: Target) -> Verdict:
    """In a job without the launch token, an HPC work directory cannot be checked."""
    return Verdict(
        target,
        Outcome.NO_CREDENTIALS,
        f"user on cluster {target.location}",
        detail="HPC logins need the launch token, and this job has none: set "
        "$CREDSIDECAR_TOKEN_FILE to the sidecar's launch token, or run preflight before launch "
        "with --token-file",
    )


def hpc_check(token: str, issuer_url: str | None, session: aiohttp.ClientSession) -> HpcCheck:
    """The HPC check (preflight/hpc.py: `credsidecar hpc check` over the launch's own SSH
    login), imported when an ssh:// target is checked (asyncssh is not loaded otherwise)."""

    async def check(target: Target) -> Verdict:
        from credsidecar.preflight.hpc import check_hpc

        return await check_hpc(target, launch_token=token, session=session, issuer_url=issuer_url)

    return check


class Preflight:
    def __init__(
        self,
        source: CredentialSource,
        checks: Mapping[str, Check],
        hpc: HpcCheck = hpc_without_token,
        concurrency: int = MAX_CONCURRENT_CHECKS,
    ) -> None:
        self._source = source
        self._checks = checks
        self._hpc = hpc
        self._limit = asyncio.Semaphore(concurrency)
        self._credentials: dict[CloudIdentity, asyncio.Task[Obtained]] = {}
        self._others: dict[str, asyncio.Task[list[CloudIdentity]]] = {}

    async def run(self, targets: Sequence[Target]) -> tuple[Finding, ...]:
        """A finding per target, in the targets' order."""
        try:
            return tuple(await asyncio.gather(*(self.check(t) for t in targets)))
        finally:
            for task in [*self._credentials.values(), *self._others.values()]:
                task.cancel()

    async def check(self, target: Target) -> Finding:
        if target.cloud == "hpc":
            return Finding(await self._hpc(target))
        identity = self._source.default(target.cloud)
        if identity is None:
            return Finding(self._no_identity(target))
        verdict, used = await self._check_as(target, identity)
        if verdict.outcome not in _TRY_OTHERS:
            return Finding(verdict, identity=used)
        # In a job the sidecar's list of Azure identities holds the default one too.
        others = [o for o in await self._other_identities(target.cloud) if o.label != used.label]
        results = await asyncio.gather(*(self._check_as(target, o) for o in others))
        passed = tuple(i for v, i in results if v.outcome is Outcome.OK)
        verdict = replace(verdict, alternatives=tuple(i.label for i in passed))
        return Finding(verdict, passed, tuple(i for _, i in results), used)

    def _no_identity(self, target: Target) -> Verdict:
        name = CLOUD_NAMES.get(target.cloud, target.cloud)
        if isinstance(self._source, JobCredentials):
            why = (
                f"the job environment has no {name} endpoint: apply `credsidecar env` in the "
                f"job, and start the sidecar with a launch that grants a {name} identity"
            )
        else:
            why = f"the launch token grants no {name} identity; ask for one in the launch request"
        return Verdict(target, Outcome.NO_CREDENTIALS, "none", detail=why)

    def _obtain(self, identity: CloudIdentity) -> asyncio.Task[Obtained]:
        task = self._credentials.get(identity)
        if task is None:  # single-flight: every target of this identity awaits one fetch
            task = self._credentials[identity] = asyncio.ensure_future(
                self._source.obtain(identity)
            )
        return task

    async def _other_identities(self, cloud: str) -> list[CloudIdentity]:
        task = self._others.get(cloud)
        if task is None:
            task = self._others[cloud] = asyncio.ensure_future(self._source.others(cloud))
        return await task

    async def _check_as(
        self, target: Target, identity: CloudIdentity
    ) -> tuple[Verdict, CloudIdentity]:
        try:
            got = await asyncio.shield(self._obtain(identity))
        except CredsidecarError as exc:
            return Verdict(target, Outcome.NO_CREDENTIALS, identity.label,
                           detail=exc.message), identity  # fmt: skip
        check = self._checks[target.cloud]
        async with self._limit:
            try:
                verdict = await check(target, got)
            except ConfigError:
                raise  # a missing extra or bad setting: the whole run stops and says so
            except CredsidecarError as exc:
                verdict = Verdict(target, Outcome.UNREACHABLE, got.identity.label,
                                  detail=exc.message)  # fmt: skip
        return verdict, got.identity


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the launch token file {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"the launch token file {path} is empty")
    return token


async def run_preflight(
    targets: Sequence[Target],
    config: PreflightConfig,
    env: Mapping[str, str],
    checks: Mapping[str, Check] | None = None,
) -> Report:
    """Checks `targets` with credentials from the launch token (`config.token_file`) or, in
    the job, from the environment `env` (HPC logins there use `$CREDSIDECAR_TOKEN_FILE`'s
    launch token when the job has one); `checks` replaces the clouds' (tests)."""
    endpoints = config.endpoints(env)
    tls = await asyncio.to_thread(client_context, config.ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        source: CredentialSource
        token: str | None = None
        if config.token_file is not None:
            token = await asyncio.to_thread(_read_token, config.token_file)
            source = LaunchCredentials(token, read_claims(token), config.sidecar_config(), session)
        else:
            source = JobCredentials(env, session)
            if env.get(TOKEN_FILE_VARIABLE) and any(t.cloud == "hpc" for t in targets):
                token = await asyncio.to_thread(_read_token, Path(env[TOKEN_FILE_VARIABLE]))
        hpc = hpc_without_token if token is None else hpc_check(token, config.issuer_url, session)
        async with probe_session(endpoints.ca_file) as storage:
            chosen = checks or cloud_checks(endpoints, config.write_probe, storage)
            findings = await Preflight(source, chosen, hpc).run(targets)
    return Report(source.where, source.user, source.run, findings, config.write_probe,
                  job=config.token_file is None)  # fmt: skip
