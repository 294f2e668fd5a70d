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
from credsidecar.clouds.remedies import (
    GcpStsCause,
    Presented,
    gcp_iam_fix,
    gcp_principal,
    gcp_sts_fix,
    supplier_refusal,
)
from credsidecar.clouds.upstream_http import post
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, Unavailable, bounded
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

    async def _federated(self, scopes: Sequence[str]) -> tuple[str, float, Presented]:
        """A federated access token, its expiry, and what Google was shown (for errors)."""
        s = self.settings
        try:
            subject = await self._supplier.token(s.audience, "gcp", s.identity_name)
        except CredsidecarError as exc:
            raise supplier_refusal(exc, self._who, self._target) from exc
        seen = Presented.of(subject.token, s.audience)
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
            return body["access_token"], started + int(body.get("expires_in", 3600)), seen
        raise self._sts_error(status, body, seen)

    @property
    def _target(self) -> str:
        s = self.settings
        target = s.service_account or f"provider {s.audience}"
        return f"gcp identity {s.identity_name!r} ({target})" if s.identity_name else target

    def _sts_error(self, status: int, body: dict[str, Any], seen: Presented) -> CredsidecarError:
        """Google STS's refusal: the provider setting that did not match, and how to fix it."""
        error = bounded(body.get("error") or f"HTTP {status}", 64)
        detail = bounded(body.get("error_description") or error)
        said = f"Google STS said: {error}: {detail}"
        if status >= 500 or status == 429:
            return Unavailable(f"Google STS failed for {self._who}; retrying. {said}")
        provider = self.settings.audience
        head = f"{self._who} may not use workload identity provider {provider}"
        if self.settings.identity_name:
            head += f" (gcp identity {self.settings.identity_name!r})"
        lower = detail.lower()
        fix: GcpStsCause
        if error == "invalid_target":
            cause, fix = "the provider or its pool does not exist or is disabled", "target"
        elif "audience" in lower:
            cause = f"the provider does not accept audience {seen.audience}"
            fix = "audience"
        elif "issuer" in lower and "match" in lower:
            cause, fix = f"the provider does not trust issuer {seen.issuer}", "issuer"
        elif "condition" in lower or error == "unauthorized_client":
            cause = f"the provider's attribute condition rejects subject {seen.subject}"
            fix = "condition"
        elif "expired" in lower:
            cause, fix = f"the token from {seen.issuer} expired", "expired"
        elif "key" in lower or "signature" in lower:
            cause = f"Google could not verify the token with the keys of {seen.issuer}"
            fix = "keys"
        else:
            return Forbidden(f"{head}: the token from {seen.issuer} was rejected. {said}")
        return Forbidden(f"{head}: {cause}; {gcp_sts_fix(fix, provider, seen)}. {said}")

    def _iam_error(
        self, status: int, body: dict[str, Any], permission: str, seen: Presented
    ) -> CredsidecarError:
        """IAM Credentials' refusal: usually the missing workloadIdentityUser binding."""
        error = body.get("error")
        detail = bounded(error.get("message", "") if isinstance(error, dict) else body)
        said = f"IAM said: {detail}"
        sa = str(self.settings.service_account)
        if status >= 500 or status == 429:
            return Unavailable(f"IAM Credentials failed for {self._who} as {sa}; retrying. {said}")
        head = self._iam_head(sa)
        if status == 403:
            return Forbidden(f"{head}: {self._iam_denied(permission, sa, seen)}. {said}")
        if status == 404:
            return Forbidden(
                f"{head}: service account {sa} does not exist; create it or correct the "
                f"identity's service_account in the policy. {said}"
            )
        if status == 401:
            return Forbidden(f"{head}: {self._iam_unauthorized(seen)}. {said}")
        return BadRequest(f"IAM Credentials refused the request of {self._who} for {sa}. {said}")

    # What differs when the token impersonating comes from elsewhere (the node: gcp_node.py).

    def _iam_head(self, sa: str) -> str:
        head = f"{self._who} may not impersonate {sa}"
        if self.settings.identity_name:
            head += f" (gcp identity {self.settings.identity_name!r})"
        return head

    def _iam_denied(self, permission: str, sa: str, seen: Presented) -> str:
        member = gcp_principal(self.settings.audience, seen.subject)
        return f"{permission} denied to {member}; {gcp_iam_fix(sa, self.settings.audience, seen)}"

    def _iam_unauthorized(self, seen: Presented) -> str:
        return (
            f"IAM did not accept the pool's federated access token for {seen.subject}; check "
            "that the IAM Credentials API is enabled in the service account's project"
        )

    async def access_token(self, scopes: Sequence[str]) -> GcpToken:
        scopes = tuple(scopes) or (CLOUD_PLATFORM,)
        s = self.settings
        if s.service_account is None:
            token, expires_at, _ = await self._federated(scopes)
            return GcpToken(token, expires_at, scopes)
        federated, _, seen = await self._federated((CLOUD_PLATFORM,))
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
        raise self._iam_error(status, body, "iam.serviceAccounts.getAccessToken", seen)

    async def id_token(self, audience: str) -> GcpIdToken:
        s = self.settings
        if s.service_account is None:
            raise BadRequest(
                f"ID tokens need a service account: GCP identity {s.identity_name!r} of "
                f"{self._who} uses direct federation; add `service_account` to it in the policy"
            )
        federated, _, seen = await self._federated((CLOUD_PLATFORM,))
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
        raise self._iam_error(status, body, "iam.serviceAccounts.getOpenIdToken", seen)
