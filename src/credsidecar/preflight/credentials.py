"""Where preflight gets the credentials it checks with, in the two places it runs.

    CredentialSource            one small protocol: the default identity per cloud, the other
    │                           identities granted to the launch, and a credential for one
    ├── JobCredentials          inside the job: only the job environment (`credsidecar env`),
    │                           through the sidecar's endpoints, as the SDKs would ask them
    └── LaunchCredentials       before launch: the launch token, exchanged in-process exactly as
                                the sidecar would (providers.py's settings, clouds/' exchangers)

A credential that cannot be had raises a `CredsidecarError` whose message is the cause: the
sidecar's own (the body of its 503/403), or the issuer's and the cloud's refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

import aiohttp

from credsidecar.clouds.aws import AwsExchanger
from credsidecar.clouds.azure import AzureExchanger
from credsidecar.clouds.contracts import GCP_CLOUD_PLATFORM, AwsCredentials
from credsidecar.clouds.gcp import GcpExchanger
from credsidecar.clouds.upstream_http import UpstreamResponse, request
from credsidecar.config import SidecarConfig
from credsidecar.errors import BadRequest, CredsidecarError, Unavailable
from credsidecar.launch import LaunchClaims
from credsidecar.launch.exchange import IssuerExchange
from credsidecar.launch.grants import AwsGrant, AzureGrant, GcpGrant, Grant
from credsidecar.launch.sources import StaticTokenSource
from credsidecar.preflight.external_account import ExternalAccount, sidecar_refusal
from credsidecar.providers import aws_settings, azure_identity, gcp_settings

__all__ = [
    "AZURE_STORAGE",
    "CLOUD_NAMES",
    "CloudIdentity",
    "CredentialSource",
    "JobCredentials",
    "LaunchCredentials",
    "Obtained",
]

# The resource Azure Storage's data-plane tokens are for (what azure-storage-blob asks for).
AZURE_STORAGE = "https://storage.azure.com/"
CLOUD_NAMES = {"aws": "AWS", "gcp": "GCP", "azure": "Azure", "hpc": "HPC"}
# The sidecar's answer to an Azure client_id it does not serve lists the granted identities in
# `granted_identities` (endpoints/azure.py `_select`): how the job learns its other identities.
_NO_SUCH_CLIENT = "00000000-0000-0000-0000-000000000000"
_IMDS_TTL = "60"  # seconds: one preflight needs the IMDSv2 session for a moment


@dataclass(frozen=True)
class CloudIdentity:
    """One cloud identity a check can run as."""

    cloud: str  # "aws" | "gcp" | "azure"
    label: str  # what reports show: role ARN, service account email, Azure client id
    name: str | None = None  # the grant's name in the launch token (None: the job cannot tell)
    default: bool = True  # the identity the run uses unless told otherwise
    select: str = ""  # how a run selects it instead (for the alternatives sentence)


@dataclass(frozen=True)
class Obtained:
    """A credential and the identity it is for (its label made exact once obtained)."""

    identity: CloudIdentity
    aws: AwsCredentials | None = None
    token: str | None = None  # GCP and Azure: the bearer access token


class CredentialSource(Protocol):
    where: str  # one phrase for the report: where the credentials came from
    user: str | None  # the launching user, when this source can tell
    run: str | None

    def default(self, cloud: str) -> CloudIdentity | None: ...

    async def others(self, cloud: str) -> list[CloudIdentity]: ...

    async def obtain(self, identity: CloudIdentity) -> Obtained: ...


# inside the job ---------------------------------------------------------------------------------


class JobCredentials:
    """Credentials as the job's SDKs get them, from the variables `credsidecar env` printed."""

    def __init__(self, env: Mapping[str, str], session: aiohttp.ClientSession) -> None:
        self._env = env
        self._session = session
        self.user: str | None = None  # the sidecar's endpoints do not say who launched the run
        self.run: str | None = None
        self.where = f"in the job, through the sidecar at {env.get('CREDSIDECAR_URL', '?')}"

    def default(self, cloud: str) -> CloudIdentity | None:
        env = self._env
        if cloud == "aws" and env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
            return CloudIdentity("aws", "the job's AWS role")
        if cloud == "gcp" and env.get("GCE_METADATA_HOST"):
            return CloudIdentity("gcp", "the job's service account")
        if cloud == "gcp" and env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return CloudIdentity("gcp", "the job's external account")
        if cloud == "azure" and env.get("IDENTITY_ENDPOINT") and env.get("IDENTITY_HEADER"):
            return CloudIdentity("azure", "the job's managed identity")
        return None

    async def others(self, cloud: str) -> list[CloudIdentity]:
        """Azure's other granted identities, which the sidecar serves by client_id; the
        sidecar serves one AWS role and one GCP account, so those have none here."""
        if cloud != "azure" or self.default("azure") is None:
            return []
        try:
            resp = await self._azure(_NO_SUCH_CLIENT)
        except CredsidecarError:
            return []
        granted = resp.fields().get("granted_identities")
        found = []
        for item in granted if isinstance(granted, list) else []:
            name, client_id = (item.get("name"), item.get("client_id")) if isinstance(
                item, dict) else (None, None)  # fmt: skip
            if not isinstance(name, str) or not isinstance(client_id, str):
                continue
            select = (f"ask for client_id={client_id} (e.g. `ManagedIdentityCredential(client_id="
                      f"...)`, `az login --identity --client-id {client_id}`)")  # fmt: skip
            found.append(CloudIdentity("azure", client_id, name, False, select))
        return found

    async def obtain(self, identity: CloudIdentity) -> Obtained:
        if identity.cloud == "aws":
            return await self._aws(identity)
        if identity.cloud == "gcp":
            return await self._gcp(identity)
        return await self._azure_token(identity)

    async def _get(self, url: str, what: str, headers: Mapping[str, str]) -> UpstreamResponse:
        return await request(
            self._session,
            "GET",
            url,
            f"the sidecar (asked for {what})",
            headers=headers,
            hint="is the sidecar running? (`credsidecar healthcheck`)",
        )

    async def _aws(self, identity: CloudIdentity) -> Obtained:
        env = self._env
        url = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        secret = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")
        token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        if token_file:  # botocore prefers the file, as here
            try:
                secret = await asyncio.to_thread(Path(token_file).read_text, encoding="utf-8")
            except OSError as exc:
                raise Unavailable(f"cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE "
                                  f"{token_file}: {exc.strerror}") from exc  # fmt: skip
        resp = await self._get(url, "AWS credentials", {"Authorization": secret})
        if resp.status != 200:
            raise sidecar_refusal(resp, "AWS credentials")
        body = resp.fields()
        try:
            expires_at = datetime.fromisoformat(str(body["Expiration"])).timestamp()
            account = str(body.get("AccountId") or "")
            role_name = await self._imds_role_name()
            role_arn = f"arn:aws:iam::{account}:role/{role_name}" if role_name else ""
            creds = AwsCredentials(
                access_key_id=str(body["AccessKeyId"]),
                secret_access_key=str(body["SecretAccessKey"]),
                session_token=str(body["Token"]),
                expires_at=expires_at,
                role_arn=role_arn,
                assumed_role_arn=role_arn,
                account_id=account,
            )
        except (KeyError, ValueError) as exc:
            raise Unavailable(f"the sidecar's AWS credentials at {url} lack {exc}") from exc
        label = role_arn or (f"the job's AWS role in account {account}" if account else "")
        return Obtained(replace(identity, label=label or identity.label), aws=creds)

    async def _imds_role_name(self) -> str | None:
        """The role's name, from IMDSv2 (absent with --secret-only: then the account only)."""
        base = self._env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        if not base:
            return None
        try:
            put = await request(
                self._session,
                "PUT",
                f"{base}/latest/api/token",
                "the sidecar",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": _IMDS_TTL},
            )
            if put.status != 200:
                return None
            got = await self._get(
                f"{base}/latest/meta-data/iam/security-credentials/",
                "the AWS role name",
                {"X-aws-ec2-metadata-token": put.text},
            )
        except CredsidecarError:
            return None
        return (got.text.strip() or None) if got.status == 200 else None

    async def _gcp(self, identity: CloudIdentity) -> Obtained:
        host = self._env.get("GCE_METADATA_HOST")
        if not host:  # --secret-only: an external-account file instead of a metadata server
            account = await ExternalAccount.from_file(
                self._env["GOOGLE_APPLICATION_CREDENTIALS"], self._session
            )
            return Obtained(replace(identity, label=account.label),
                            token=await account.access_token())  # fmt: skip
        base = f"http://{host}/computeMetadata/v1/instance/service-accounts/default"
        flavor = {"Metadata-Flavor": "Google"}
        resp = await self._get(f"{base}/token", "a GCP access token", flavor)
        if resp.status != 200:
            raise sidecar_refusal(resp, "a GCP access token")
        token = resp.fields().get("access_token")
        if not isinstance(token, str):
            raise Unavailable(f"the sidecar's GCP token answer at {base}/token has no access_token")
        email = await self._get(f"{base}/email", "the service account", flavor)
        label = email.text.strip() if email.status == 200 and email.text.strip() else None
        return Obtained(replace(identity, label=label or identity.label), token=token)

    async def _azure(self, client_id: str | None) -> UpstreamResponse:
        query = {"api-version": "2019-08-01", "resource": AZURE_STORAGE}
        if client_id:
            query["client_id"] = client_id
        url = f"{self._env['IDENTITY_ENDPOINT']}?{urlencode(query)}"
        return await self._get(url, "an Azure token",
                               {"X-IDENTITY-HEADER": self._env["IDENTITY_HEADER"]})  # fmt: skip

    async def _azure_token(self, identity: CloudIdentity) -> Obtained:
        what = f"an Azure Storage token{'' if identity.default else ' for ' + identity.label}"
        resp = await self._azure(None if identity.default else identity.label)
        if resp.status != 200:
            raise sidecar_refusal(resp, what)
        body = resp.fields()
        token = body.get("access_token")
        if not isinstance(token, str):
            raise Unavailable(f"the sidecar's answer for {what} has no access_token")
        client_id = str(body.get("client_id") or "") or identity.label
        return Obtained(replace(identity, label=client_id), token=token)


# before launch ----------------------------------------------------------------------------------


def _label(grant: Grant, claims: LaunchClaims) -> str:
    if isinstance(grant, AwsGrant):
        return grant.role_arn or "the node's instance profile"
    if isinstance(grant, GcpGrant):
        if grant.source == "node":
            return grant.service_account or "the node's service account"
        return grant.service_account or f"{claims.subject} via {grant.audience}"
    if isinstance(grant, AzureGrant):
        return grant.client_id
    return grant.name


def _selector(grant: Grant) -> str:
    cloud = grant.provider
    request = f'`"identities": {{"{cloud}": ["{grant.name}"]}}` in the launch request'
    if isinstance(grant, AzureGrant):
        return (f"launch with {request} (or `--azure-identity {grant.name}` on the sidecar), "
                f"or ask for client_id={grant.client_id} in the job")  # fmt: skip
    return f"launch with {request}, or start the sidecar with `--{cloud}-identity {grant.name}`"


class LaunchCredentials:
    """The launch token exchanged at the issuer and then at each cloud, in this process, with
    the very settings and exchangers the sidecar uses: no sidecar, no port."""

    def __init__(
        self,
        token: str,
        claims: LaunchClaims,
        config: SidecarConfig,
        session: aiohttp.ClientSession,
    ) -> None:
        self._claims = claims
        self._config = config
        self._session = session
        issuer = config.issuer_url or claims.issuer
        source = StaticTokenSource(token, "the launch token")
        self._supplier = IssuerExchange(issuer, source, session)
        self.user: str | None = claims.user
        self.run: str | None = claims.run
        self.where = f"before launch, from the launch token of {claims.who}"

    def _identity(self, grant: Grant, default: bool) -> CloudIdentity:
        return CloudIdentity(grant.provider, _label(grant, self._claims), grant.name, default,
                             _selector(grant))  # fmt: skip

    def default(self, cloud: str) -> CloudIdentity | None:
        grants = self._claims.grants.of(cloud)
        return self._identity(grants[0], True) if grants else None

    async def others(self, cloud: str) -> list[CloudIdentity]:
        return [self._identity(g, False) for g in self._claims.grants.of(cloud)[1:]]

    def _grant(self, identity: CloudIdentity) -> Grant:
        found = next(g for g in self._claims.grants.of(identity.cloud) if g.name == identity.name)
        return found

    async def obtain(self, identity: CloudIdentity) -> Obtained:
        grant = self._grant(identity)
        who = self._claims.who
        if isinstance(grant, AwsGrant) and grant.source == "node":
            raise BadRequest(
                f"AWS identity {grant.name!r} is the node's own instance profile: only the "
                "sidecar on the node obtains it; check it in the job (`credsidecar preflight` "
                "there)"
            )
        if isinstance(grant, AwsGrant):
            settings = aws_settings(self._config, self._claims, grant)
            if settings is None:  # cannot happen: a grant always names its role
                raise BadRequest(f"AWS identity {grant.name!r} names no role")
            exchanger = AwsExchanger(settings, self._supplier, self._session, who)
            return Obtained(identity, aws=await exchanger.fetch())
        if isinstance(grant, GcpGrant) and grant.source == "node":
            raise BadRequest(
                f"GCP identity {grant.name!r} is the node's own service account: only the "
                "sidecar on the node obtains it; check it in the job (`credsidecar preflight` "
                "there)"
            )
        if isinstance(grant, GcpGrant):
            gcp = GcpExchanger(gcp_settings(self._config, grant), self._supplier, self._session,
                               who)  # fmt: skip
            token = await gcp.access_token((GCP_CLOUD_PLATFORM,))
            return Obtained(identity, token=token.access_token)
        if isinstance(grant, AzureGrant) and grant.source == "node":
            raise BadRequest(
                f"Azure identity {grant.name!r} is the node's own managed identity: only the "
                "sidecar on the node obtains it; check it in the job (`credsidecar preflight` "
                "there)"
            )
        if isinstance(grant, AzureGrant):
            azure = AzureExchanger(self._supplier, self._session, who,
                                   self._config.azure_authority)  # fmt: skip
            found = await azure.token(azure_identity(grant), AZURE_STORAGE)
            return Obtained(identity, token=found.access_token)
        raise BadRequest(f"{identity.cloud} identities are not checked with cloud credentials")
