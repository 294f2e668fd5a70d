"""GCP: workload identity federation, then (optionally) service account impersonation.

    federated token --STS token exchange--> federated access token
                    --IAM Credentials generateAccessToken / generateIdToken--> SA tokens

The three calls are small REST requests whose fields follow google-auth (google/oauth2/sts.py,
google/auth/impersonated_credentials.py); they are made here with aiohttp because google-auth's
ID-token path hard-codes iamcredentials.googleapis.com, and the sandbox needs both endpoints
configurable. Tools in the job still use google-auth unmodified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from credsidecar.clouds.contracts import (
    GCP_CLOUD_PLATFORM,
    GCP_IAM_URL,
    GCP_STS_URL,
    GcpIdToken,
    GcpToken,
)
from credsidecar.clouds.upstream_http import post
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, Unavailable
from credsidecar.launch.exchange import TokenSupplier

__all__ = ["CLOUD_PLATFORM", "GcpExchanger", "GcpIdToken", "GcpSettings", "GcpToken"]

CLOUD_PLATFORM, STS_URL, IAM_URL = GCP_CLOUD_PLATFORM, GCP_STS_URL, GCP_IAM_URL
_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type URN
_JWT = "urn:ietf:params:oauth:token-type:jwt"


@dataclass(frozen=True)
class GcpSettings:
    audience: str  # the workload identity provider's audience
    identity_name: str | None = None
    service_account: str | None = None
    project_id: str | None = None
    project_number: str | None = None
    sts_url: str = STS_URL
    iam_url: str = IAM_URL
    lifetime: int = 3600


def _rfc3339(value: str) -> float:
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


class GcpExchanger:
    def __init__(
        self,
        settings: GcpSettings,
        supplier: TokenSupplier,
        session: aiohttp.ClientSession,
        who: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._supplier = supplier
        self._session = session
        self._who = who
        self._clock = clock

    @property
    def description(self) -> str:
        target = self.settings.service_account or f"provider {self.settings.audience}"
        return f"{self._who} as {target}"

    async def _post(self, url: str, what: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        resp = await post(self._session, url, what, who=self._who, **kwargs)
        return resp.status, resp.fields()

    async def _federated(self, scopes: Sequence[str]) -> tuple[str, float]:
        s = self.settings
        subject = await self._supplier.token(s.audience, "gcp", s.identity_name)
        started = self._clock()
        status, body = await self._post(
            s.sts_url,
            "Google STS",
            form={
                "grant_type": _EXCHANGE,
                "audience": s.audience,
                "scope": " ".join(scopes),
                "requested_token_type": _ACCESS_TOKEN,
                "subject_token": subject.token,
                "subject_token_type": _JWT,
            },
        )
        if status == 200 and isinstance(body.get("access_token"), str):
            return body["access_token"], started + int(body.get("expires_in", 3600))
        raise self._sts_error(status, body)

    def _sts_error(self, status: int, body: dict[str, Any]) -> CredsidecarError:
        detail = str(body.get("error_description") or body.get("error") or f"HTTP {status}")
        head = f"{self._who} may not use workload identity provider {self.settings.audience}"
        if status >= 500 or status == 429:
            return Unavailable(f"Google STS failed for {self._who}: {detail}")
        lower = detail.lower()
        if "audience" in lower:
            cause = "the provider does not accept this audience (check the provider's allowed "
            cause += "audiences)"
        elif "condition" in lower:
            cause = "the provider's attribute condition rejected the subject"
        elif "disabled" in lower:
            cause = "the provider or its pool is disabled"
        elif "expired" in lower:
            cause = "the federated token expired (check this host's clock)"
        else:
            cause = "the token was rejected"
        return Forbidden(f"{head}: {cause}. Google STS said: {detail}")

    def _iam_error(self, status: int, body: dict[str, Any], permission: str) -> CredsidecarError:
        error = body.get("error")
        detail = error.get("message", "") if isinstance(error, dict) else str(body)[:300]
        sa = self.settings.service_account
        if status >= 500 or status == 429:
            return Unavailable(f"IAM Credentials failed for {self._who}: {detail}")
        if status in (401, 403):
            return Forbidden(
                f"{self._who} may not impersonate {sa}: {permission} denied; grant "
                f"roles/iam.workloadIdentityUser on {sa} to the user's federated principal. "
                f"IAM said: {detail}"
            )
        return BadRequest(f"IAM Credentials refused the request for {sa}: {detail}")

    async def access_token(self, scopes: Sequence[str]) -> GcpToken:
        scopes = tuple(scopes) or (CLOUD_PLATFORM,)
        s = self.settings
        if s.service_account is None:
            token, expires_at = await self._federated(scopes)
            return GcpToken(token, expires_at, scopes)
        federated, _ = await self._federated((CLOUD_PLATFORM,))
        started = self._clock()
        status, body = await self._post(
            f"{s.iam_url}/v1/projects/-/serviceAccounts/{s.service_account}:generateAccessToken",
            "IAM Credentials",
            json_body={"scope": list(scopes), "lifetime": f"{s.lifetime}s"},
            headers={"Authorization": f"Bearer {federated}"},
        )
        if status == 200 and isinstance(body.get("accessToken"), str):
            expire = body.get("expireTime")
            expires_at = _rfc3339(expire) if isinstance(expire, str) else started + s.lifetime
            return GcpToken(body["accessToken"], expires_at, scopes)
        raise self._iam_error(status, body, "iam.serviceAccounts.getAccessToken")

    async def id_token(self, audience: str) -> GcpIdToken:
        s = self.settings
        if s.service_account is None:
            raise BadRequest(
                f"ID tokens need a service account: GCP identity {s.identity_name!r} of "
                f"{self._who} uses direct federation; add `service_account` to it in the policy"
            )
        federated, _ = await self._federated((CLOUD_PLATFORM,))
        started = self._clock()
        status, body = await self._post(
            f"{s.iam_url}/v1/projects/-/serviceAccounts/{s.service_account}:generateIdToken",
            "IAM Credentials",
            json_body={"audience": audience, "includeEmail": True},
            headers={"Authorization": f"Bearer {federated}"},
        )
        if status == 200 and isinstance(body.get("token"), str):
            # ID tokens from IAM live one hour; their exp claim is not needed to serve them.
            return GcpIdToken(body["token"], started + 3600, audience)
        raise self._iam_error(status, body, "iam.serviceAccounts.getOpenIdToken")
