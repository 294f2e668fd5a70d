"""Per-cloud assembly for the sidecar: exchanger -> cache -> endpoints, plus the job variables.

Each builder returns a `Provider` bundle; the daemon starts them, serves their routes behind the
guard and writes their variables into the job environment. A cloud without an identity in the
launch token (and no override flag) is simply absent.

Longer than ~400 lines on purpose: the four clouds' builders (AWS, GCP, GCP external account,
Azure) are read side by side, each one screen, and share `Context` and `Provider`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.cache_family import CacheFamily
from credsidecar.clouds.aws import AwsCredentials, AwsExchanger, AwsSettings, role_session_name
from credsidecar.clouds.aws_node import AwsNodeExchanger
from credsidecar.clouds.azure import AzureExchanger, AzureIdentityRef, AzureToken
from credsidecar.clouds.azure_node import AzureNodeExchanger
from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE
from credsidecar.clouds.gcp import CLOUD_PLATFORM, GcpExchanger, GcpIdToken, GcpSettings, GcpToken
from credsidecar.clouds.gcp_node import GcpNodeExchanger
from credsidecar.config import SidecarConfig
from credsidecar.endpoints.aws import CONTAINER_PATH, AwsEndpoints
from credsidecar.endpoints.azure import (
    APP_SERVICE_PATH,
    LEGACY_APP_SERVICE_PATH,
    AzureEndpoints,
    resource_key,
    with_error_fields,
)
from credsidecar.endpoints.gcp import GcpEndpoints, add_flavor
from credsidecar.endpoints.gcp_external import (
    SUBJECT_TOKEN_PATH,
    GcpSubjectTokenEndpoint,
    SubjectToken,
    external_account_config,
    jwt_expiry,
)
from credsidecar.endpoints.guards import Guard, PeerPolicy, RefusalLog
from credsidecar.errors import ConfigError
from credsidecar.jobenv import AWS_UNSET, AZURE_UNSET, GCP_UNSET, write_private_atomic
from credsidecar.launch import LaunchClaims
from credsidecar.launch.exchange import TokenSupplier
from credsidecar.launch.grants import AwsGrant, AzureGrant, GcpGrant, GrantT

__all__ = [
    "Context",
    "Provider",
    "aws_settings",
    "azure_identity",
    "build_aws",
    "build_azure",
    "build_gcp",
    "gcp_settings",
]

log = logging.getLogger(__name__)

AWS_TOKEN_FILE_NAME = "aws-container-token"  # noqa: S105 - a file name
GCP_EXTERNAL_ACCOUNT_FILE_NAME = "gcp-external-account.json"
# Exported by every cloud: where `credsidecar healthcheck` finds the sidecar.
URL_VARIABLE = "CREDSIDECAR_URL"
# Variables of the metadata-server mode a job must not keep in --secret-only mode.
GCP_METADATA_VARIABLES = ("GCE_METADATA_HOST", "GCE_METADATA_IP", "METADATA_SERVER_DETECTION")
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


def aws_settings(
    config: SidecarConfig, claims: LaunchClaims | None, grant: AwsGrant | None
) -> AwsSettings | None:
    """The STS call for `grant` (or --aws-role-arn): the sidecar's, and preflight's."""
    role = config.aws_role_arn or (grant.role_arn if grant else None)
    node = grant is not None and grant.source == "node" and not config.aws_role_arn
    if not role and not node:
        return None
    user = claims.user if claims else "direct"
    return AwsSettings(
        role_arn=role or "",  # "": the node's instance profile itself
        audience=config.aws_audience or (grant.audience if grant else AWS_DEFAULT_AUDIENCE),
        identity_name=grant.name if grant else None,
        session_name=role_session_name(user, claims.run if claims else None),
        duration=config.aws_duration,
        region=config.aws_region,
        sts_endpoint=config.aws_sts_endpoint,
        session_policy=grant.session_policy if grant else None,
    )


def gcp_settings(config: SidecarConfig, grant: GcpGrant) -> GcpSettings:
    """The federation (and impersonation) for `grant`: the sidecar's, and preflight's."""
    return GcpSettings(
        audience=grant.audience,
        identity_name=grant.name,
        service_account=grant.service_account,
        project_id=config.gcp_project_id or grant.project_id,
        project_number=grant.project_number,
        sts_url=config.gcp_sts_url,
        iam_url=config.gcp_iam_url,
        lifetime=config.gcp_lifetime,
    )


def azure_identity(grant: AzureGrant) -> AzureIdentityRef:
    return AzureIdentityRef(grant.name, grant.tenant_id, grant.client_id, grant.audience,
                            grant.object_id, grant.resource_id)  # fmt: skip


async def build_aws(ctx: Context) -> Provider | None:
    config = ctx.config
    grant = _granted(ctx, AwsGrant, config.aws_identity)
    settings = aws_settings(config, ctx.claims, grant)
    if settings is None:
        return None
    exchanger: AwsExchanger | AwsNodeExchanger
    if grant is not None and grant.source == "node" and not config.aws_role_arn:
        exchanger = AwsNodeExchanger(settings, ctx.session, ctx.who_text, config.aws_node_imds_url)
    else:
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
    role_name = settings.role_arn.rsplit("/", 1)[-1] or (grant.name if grant else "node")
    endpoints = AwsEndpoints(cache, secret, ctx.audit, guard, role_name, ctx.who,
                             region=config.aws_region,
                             relative_path=config.aws_relative_uri)  # fmt: skip
    routes = endpoints.routes()
    exports = {
        URL_VARIABLE: ctx.url,
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
    if config.secret_only:
        # IMDSv2's session token is no secret: anyone on the loopback can PUT for one.
        routes = [r for r in routes if r.path == CONTAINER_PATH]
        del exports["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
        del exports["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"]
        # Without it an SDK that misses the container endpoint would ask the host's real IMDS
        # (the node's role) instead of failing.
        exports["AWS_EC2_METADATA_DISABLED"] = "true"
        unsets += ["AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"]
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
        routes=guard.routes(routes),
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
    settings = gcp_settings(config, grant)
    exchanger: GcpExchanger
    if grant.source == "node":
        if config.secret_only:
            raise ConfigError(
                f"--secret-only cannot serve gcp identity {grant.name!r} of {ctx.who_text}: it "
                "is the node's service account, which only the metadata-server mode serves; "
                "launch with a federated GCP identity, or without --secret-only"
            )
        exchanger = GcpNodeExchanger(settings, ctx.supplier, ctx.session, ctx.who_text,
                                     config.gcp_node_metadata_url)  # fmt: skip
    elif config.secret_only:
        return await _build_gcp_external(ctx, settings)
    else:
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
        URL_VARIABLE: ctx.url,
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


async def _build_gcp_external(ctx: Context, settings: GcpSettings) -> Provider:
    """--secret-only: an external-account file instead of the metadata server; the job's
    Google libraries call STS (and IAM Credentials) themselves with the token served here."""
    config = ctx.config
    who = ctx.who_text
    target = settings.service_account or f"provider {settings.audience}"

    async def fetch() -> SubjectToken:
        found = await ctx.supplier.token(settings.audience, "gcp", settings.identity_name)
        expires_at = found.expires_at
        if expires_at is None:  # direct mode: the token file's own expiry
            expires_at = jwt_expiry(found.token, time.time())
        return SubjectToken(found.token, expires_at)

    def obtained(value: SubjectToken) -> None:
        ctx.audit.event("credentials.obtained", **ctx.who, provider="gcp", kind="subject_token",
                        identity=settings.service_account or settings.audience,
                        expiry=int(value.expires_at))  # fmt: skip

    cache: CredentialCache[SubjectToken] = CredentialCache(
        f"GCP subject token ({who} as {target})", fetch, on_new=obtained
    )
    secret = secrets.token_urlsafe(32)
    guard = Guard(ctx.hosts, ctx.refusals, config.link_local, peers=ctx.peers)
    endpoint = GcpSubjectTokenEndpoint(cache, secret, guard, ctx.audit, ctx.who,
                                       settings.audience)  # fmt: skip
    impersonation = None
    if settings.service_account:
        impersonation = (f"{settings.iam_url}/v1/projects/-/serviceAccounts/"
                         f"{settings.service_account}:generateAccessToken")  # fmt: skip
    document = external_account_config(
        audience=settings.audience,
        subject_token_url=f"{ctx.url}{SUBJECT_TOKEN_PATH}",
        secret=secret,
        token_url=settings.sts_url,
        impersonation_url=impersonation,
        lifetime=settings.lifetime,
    )
    path = config.run_dir / GCP_EXTERNAL_ACCOUNT_FILE_NAME
    await asyncio.to_thread(write_private_atomic, path, json.dumps(document, indent=2))
    gcloud_dir = config.run_dir / "gcloud"
    await asyncio.to_thread(gcloud_dir.mkdir, mode=0o700, exist_ok=True)
    exports = {
        URL_VARIABLE: ctx.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(path),
        # No metadata server here: libraries must not probe for (or fall back to) the host's.
        "NO_GCE_CHECK": "True",
        "CLOUDSDK_CONFIG": str(gcloud_dir),
    }
    if settings.project_id:
        exports["GOOGLE_CLOUD_PROJECT"] = settings.project_id
    return Provider(
        name="gcp",
        description=f"{who} as {target} (external account)",
        routes=guard.routes(endpoint.routes()),
        exports=exports,
        unsets=[*GCP_UNSET, *GCP_METADATA_VARIABLES],
        start=lambda: cache.start(config.ready_timeout),
        ready=cache.current_entry,
        close=cache.close,
        private_files=[path],
    )


async def build_azure(ctx: Context) -> Provider | None:
    config = ctx.config
    if ctx.claims is None:
        return None
    identities = [azure_identity(g) for g in ctx.claims.grants.azure]
    if not identities:
        return None
    default = _granted(ctx, AzureGrant, config.azure_identity)
    if default is not None:  # the identity served when the SDK names none goes first
        identities.sort(key=lambda i: i.name != default.name)
    by_name = {i.name: i for i in identities}
    exchanger = AzureExchanger(ctx.supplier, ctx.session, ctx.who_text, config.azure_authority)
    # `source = "node"` grants: the node's own managed identities, from the node's IMDS.
    from_node = {g.name for g in ctx.claims.grants.azure if g.source == "node"}
    node = AzureNodeExchanger(ctx.session, ctx.who_text, config.azure_node_imds_url)

    async def fetch(key: tuple[str, str]) -> AzureToken:
        via = node if key[0] in from_node else exchanger
        return await via.token(by_name[key[0]], key[1])

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
    routes = endpoints.routes()
    az_dir = config.run_dir / "azure"
    await asyncio.to_thread(az_dir.mkdir, mode=0o700, exist_ok=True)
    exports = {
        URL_VARIABLE: ctx.url,
        "IDENTITY_ENDPOINT": f"{ctx.url}{APP_SERVICE_PATH}",
        "IDENTITY_HEADER": secret,
        # The App Service 2017-09-01 contract for older clients (msrestazure, az <= 2.45), with
        # the same secret: both sit in the one environment, so a second value would separate
        # nothing and only double what must stay out of logs. Newer SDKs check
        # IDENTITY_ENDPOINT first and keep using it.
        "MSI_ENDPOINT": f"{ctx.url}{LEGACY_APP_SERVICE_PATH}",
        "MSI_SECRET": secret,
        # msrestazure (az <= 2.45) sends the secret only where this is set (its App Service
        # test); without it, it POSTs to MSI_ENDPOINT with no secret (Cloud Shell's contract).
        # Nothing newer reads it.
        "APPSETTING_WEBSITE_SITE_NAME": "credsidecar",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": ctx.url,
        # az keeps logins in its config directory; a private empty one starts clean.
        "AZURE_CONFIG_DIR": str(az_dir),
    }
    unsets = [name for name in AZURE_UNSET if name not in exports]
    if config.secret_only:
        # Only the paths that check the per-job secret: the IMDS path's only check is a
        # `Metadata: true` header anyone can send, and the instance metadata (subscription,
        # resource group) is no business of another local user either.
        secret_checked = {APP_SERVICE_PATH, LEGACY_APP_SERVICE_PATH, f"{LEGACY_APP_SERVICE_PATH}/"}
        routes = [r for r in routes if r.path in secret_checked]
        del exports["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
        unsets.append("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    first = identities[0]

    async def start() -> None:
        await tokens.get(ready_key)

    return Provider(
        name="azure",
        description=f"{ctx.who_text} as Azure identity {first.name} ({first.client_id})",
        routes=guard.routes(routes),
        exports=exports,
        unsets=unsets,
        start=start,
        ready=lambda: tokens.current(ready_key),
        close=tokens.close,
    )
