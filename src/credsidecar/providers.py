"""Per-cloud assembly for the sidecar: exchanger -> cache -> endpoints, plus the job variables.

Each builder returns a `Provider` bundle; the daemon starts them, serves their routes behind the
guard and writes their variables into the job environment. A cloud without an identity in the
launch token (and no override flag) is simply absent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.cache_family import CacheFamily
from credsidecar.clouds.aws import AwsCredentials, AwsExchanger, AwsSettings, role_session_name
from credsidecar.clouds.azure import AzureExchanger, AzureIdentityRef, AzureToken
from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE
from credsidecar.clouds.gcp import CLOUD_PLATFORM, GcpExchanger, GcpIdToken, GcpSettings, GcpToken
from credsidecar.config import SidecarConfig
from credsidecar.endpoints.aws import CONTAINER_PATH, AwsEndpoints
from credsidecar.endpoints.azure import (
    APP_SERVICE_PATH,
    AzureEndpoints,
    resource_key,
    with_error_fields,
)
from credsidecar.endpoints.gcp import GcpEndpoints, add_flavor
from credsidecar.endpoints.guards import Guard, PeerPolicy, RefusalLog
from credsidecar.errors import ConfigError
from credsidecar.jobenv import AWS_UNSET, AZURE_UNSET, GCP_UNSET, write_private_atomic
from credsidecar.launch import LaunchClaims
from credsidecar.launch.exchange import TokenSupplier
from credsidecar.launch.grants import AwsGrant, AzureGrant, GcpGrant, GrantT

__all__ = ["Context", "Provider", "build_aws", "build_azure", "build_gcp"]

log = logging.getLogger(__name__)

AWS_TOKEN_FILE_NAME = "aws-container-token"  # noqa: S105 - a file name
ARM_RESOURCE = "https://management.azure.com/"


@dataclass
class Context:
    config: SidecarConfig
    claims: LaunchClaims | None
    supplier: TokenSupplier
    session: aiohttp.ClientSession
    audit: AuditLog
    who: dict[str, str | None]
    url: str
    hosts: frozenset[str]
    refusals: RefusalLog
    # One policy for every guard: a connection's peer is looked up once, whichever cloud it asks.
    peers: PeerPolicy = field(default_factory=PeerPolicy.for_job)

    @property
    def who_text(self) -> str:
        return self.claims.who if self.claims else "the direct token"


@dataclass
class Provider:
    name: str
    description: str
    routes: list[web.RouteDef]
    exports: dict[str, str]
    unsets: list[str]
    start: Callable[[], Awaitable[None]]
    ready: Callable[[], object]  # raises Unavailable (or the refusal) while not ready
    close: Callable[[], Awaitable[None]]
    private_files: list[Path] = field(default_factory=list)


def _granted(ctx: Context, kind: type[GrantT], name: str | None) -> GrantT | None:
    """The launch token's grant of `kind` called `name` (--aws-identity...), else its default."""
    if ctx.claims is None:
        return None
    found = ctx.claims.grants.get(kind, name)
    if name and found is None:
        raise ConfigError(
            f"{kind.provider} identity {name!r} is not in the launch token of {ctx.claims.who} "
            f"(it carries {ctx.claims.grants.names(kind.provider) or 'none'})"
        )
    return found


async def build_aws(ctx: Context) -> Provider | None:
    config = ctx.config
    grant = _granted(ctx, AwsGrant, config.aws_identity)
    role = config.aws_role_arn or (grant.role_arn if grant else None)
    if not role:
        return None
    user = ctx.claims.user if ctx.claims else "direct"
    settings = AwsSettings(
        role_arn=role,
        audience=config.aws_audience or (grant.audience if grant else AWS_DEFAULT_AUDIENCE),
        identity_name=grant.name if grant else None,
        session_name=role_session_name(user, ctx.claims.run if ctx.claims else None),
        duration=config.aws_duration,
        region=config.aws_region,
        sts_endpoint=config.aws_sts_endpoint,
        session_policy=grant.session_policy if grant else None,
    )
    exchanger = AwsExchanger(settings, ctx.supplier, ctx.session, ctx.who_text)

    def obtained(creds: AwsCredentials) -> None:
        ctx.audit.event("credentials.obtained", **ctx.who, provider="aws", role=creds.role_arn,
                        access_key_id=creds.access_key_id, expiry=int(creds.expires_at),
                        session=settings.session_name)  # fmt: skip
        log.info("AWS credentials %s for %s valid until %d", creds.access_key_id,
                 exchanger.description, int(creds.expires_at))  # fmt: skip

    cache: CredentialCache[AwsCredentials] = CredentialCache(
        f"AWS ({exchanger.description})", exchanger.fetch, on_new=obtained
    )
    secret = secrets.token_urlsafe(32)
    secret_file = config.run_dir / AWS_TOKEN_FILE_NAME
    # No newline: botocore sends the file's bytes as the header value.
    await asyncio.to_thread(write_private_atomic, secret_file, secret)
    guard = Guard(ctx.hosts, ctx.refusals, config.link_local, peers=ctx.peers)
    role_name = settings.role_arn.rsplit("/", 1)[-1]
    endpoints = AwsEndpoints(cache, secret, ctx.audit, guard, role_name, ctx.who)
    exports = {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{ctx.url}{CONTAINER_PATH}",
        # Java reads the variable, botocore/Go/JS prefer the file: both hold the secret.
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": secret,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(secret_file),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": ctx.url,  # no trailing slash
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4",
        "AWS_REGION": config.aws_region,
        "AWS_DEFAULT_REGION": config.aws_region,
    }
    unsets = list(AWS_UNSET)
    if not config.keep_aws_config:
        exports["AWS_CONFIG_FILE"] = os.devnull
        exports["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if config.aws_endpoint_url:
        exports["AWS_ENDPOINT_URL"] = config.aws_endpoint_url
    else:
        unsets.append("AWS_ENDPOINT_URL")
    return Provider(
        name="aws",
        description=exchanger.description,
        routes=guard.routes(endpoints.routes()),
        exports=exports,
        unsets=unsets,
        start=lambda: cache.start(config.ready_timeout),
        ready=cache.current_entry,
        close=cache.close,
        private_files=[secret_file],
    )


async def build_gcp(ctx: Context) -> Provider | None:
    config = ctx.config
    grant = _granted(ctx, GcpGrant, config.gcp_identity)
    if grant is None:
        return None
    settings = GcpSettings(
        audience=grant.audience,
        identity_name=grant.name,
        service_account=grant.service_account,
        project_id=config.gcp_project_id or grant.project_id,
        project_number=grant.project_number,
        sts_url=config.gcp_sts_url,
        iam_url=config.gcp_iam_url,
        lifetime=config.gcp_lifetime,
    )
    exchanger = GcpExchanger(settings, ctx.supplier, ctx.session, ctx.who_text)

    def obtained(kind: str) -> Callable[[object, GcpToken | GcpIdToken], None]:
        def record(key: object, value: GcpToken | GcpIdToken) -> None:
            ctx.audit.event("credentials.obtained", **ctx.who, provider="gcp", kind=kind,
                            identity=settings.service_account or settings.audience,
                            key=",".join(key) if isinstance(key, tuple) else str(key),
                            expiry=int(value.expires_at))  # fmt: skip

        return record

    tokens: CacheFamily[tuple[str, ...], GcpToken] = CacheFamily(
        f"GCP ({exchanger.description})", exchanger.access_token, config.ready_timeout,
        on_new=obtained("access_token"), pinned=[(CLOUD_PLATFORM,)],  # readiness rests on it
    )  # fmt: skip
    id_tokens: CacheFamily[str, GcpIdToken] = CacheFamily(
        f"GCP ID tokens ({exchanger.description})", exchanger.id_token, config.ready_timeout,
        on_new=obtained("id_token"),
    )  # fmt: skip
    principal = settings.service_account or f"{settings.identity_name}@federated.invalid"
    endpoints = GcpEndpoints(tokens, id_tokens, principal, settings.project_id,
                             settings.project_number, ctx.audit, ctx.who)  # fmt: skip
    guard = Guard(ctx.hosts, ctx.refusals, config.link_local, decorate=add_flavor, peers=ctx.peers)
    gcloud_dir = config.run_dir / "gcloud"
    await asyncio.to_thread(gcloud_dir.mkdir, mode=0o700, exist_ok=True)
    host = ctx.url.removeprefix("http://")
    exports = {
        "GCE_METADATA_HOST": host,
        "GCE_METADATA_IP": host,  # Node reads the IP first; Python pings the IP
        "METADATA_SERVER_DETECTION": "assume-present",
        # An ADC file in the node's gcloud config would win over the metadata server.
        "CLOUDSDK_CONFIG": str(gcloud_dir),
    }
    if settings.project_id:
        exports["GOOGLE_CLOUD_PROJECT"] = settings.project_id

    async def close() -> None:
        await tokens.close()
        await id_tokens.close()

    default = (CLOUD_PLATFORM,)

    async def start() -> None:
        await tokens.get(default)

    return Provider(
        name="gcp",
        description=exchanger.description,
        routes=guard.routes(endpoints.routes()),
        exports=exports,
        unsets=list(GCP_UNSET),
        start=start,
        ready=lambda: tokens.current(default),
        close=close,
    )


async def build_azure(ctx: Context) -> Provider | None:
    config = ctx.config
    if ctx.claims is None:
        return None
    identities = [
        AzureIdentityRef(g.name, g.tenant_id, g.client_id, g.audience, g.object_id, g.resource_id)
        for g in ctx.claims.grants.azure
    ]
    if not identities:
        return None
    default = _granted(ctx, AzureGrant, config.azure_identity)
    if default is not None:  # the identity served when the SDK names none goes first
        identities.sort(key=lambda i: i.name != default.name)
    by_name = {i.name: i for i in identities}
    exchanger = AzureExchanger(ctx.supplier, ctx.session, ctx.who_text, config.azure_authority)

    async def fetch(key: tuple[str, str]) -> AzureToken:
        return await exchanger.token(by_name[key[0]], key[1])

    def obtained(key: tuple[str, str], value: AzureToken) -> None:
        ctx.audit.event("credentials.obtained", **ctx.who, provider="azure", identity=key[0],
                        client_id=value.client_id, resource=key[1],
                        expiry=int(value.expires_at))  # fmt: skip

    name = f"Azure ({ctx.who_text})"
    # The sidecar is ready once the default identity holds an ARM token, proving federation.
    ready_key = (identities[0].name, resource_key(ARM_RESOURCE))
    tokens: CacheFamily[tuple[str, str], AzureToken] = CacheFamily(
        name, fetch, config.ready_timeout, on_new=obtained, pinned=[ready_key]
    )
    secret = secrets.token_urlsafe(32)
    guard = Guard(
        ctx.hosts, ctx.refusals, config.link_local, decorate=with_error_fields, peers=ctx.peers
    )
    endpoints = AzureEndpoints(tokens, identities, secret, guard, ctx.audit, ctx.who)
    az_dir = config.run_dir / "azure"
    await asyncio.to_thread(az_dir.mkdir, mode=0o700, exist_ok=True)
    exports = {
        "IDENTITY_ENDPOINT": f"{ctx.url}{APP_SERVICE_PATH}",
        "IDENTITY_HEADER": secret,
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": ctx.url,
        # az keeps logins in its config directory; a private empty one starts clean.
        "AZURE_CONFIG_DIR": str(az_dir),
    }
    first = identities[0]

    async def start() -> None:
        await tokens.get(ready_key)

    return Provider(
        name="azure",
        description=f"{ctx.who_text} as Azure identity {first.name} ({first.client_id})",
        routes=guard.routes(endpoints.routes()),
        exports=exports,
        unsets=list(AZURE_UNSET),
        start=start,
        ready=lambda: tokens.current(ready_key),
        close=tokens.close,
    )
