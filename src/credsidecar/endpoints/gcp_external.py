"""GCP without the metadata server (`--secret-only`): Google's external-account credentials.

The GCE metadata contract has no secret header, so on a loopback other jobs share the sidecar
serves GCP through the credential configuration every Google client library and gcloud read:
`GOOGLE_APPLICATION_CREDENTIALS` names a file of type `external_account` whose
`credential_source.url` is `SUBJECT_TOKEN_PATH` here, with the per-job secret in
`credential_source.headers`. The client fetches the federated token (the issuer hop's JWT for
the workload identity provider's audience) and calls Google's STS, and IAM Credentials when the
identity names a service account, itself (google/auth/identity_pool.py, url-sourced).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.endpoints.guards import Guard, secret_bytes, secrets_match
from credsidecar.errors import CredsidecarError, answer_status

__all__ = [
    "SUBJECT_TOKEN_FIELD",
    "SUBJECT_TOKEN_PATH",
    "GcpSubjectTokenEndpoint",
    "SubjectToken",
    "external_account_config",
    "jwt_expiry",
]

SUBJECT_TOKEN_PATH = "/credsidecar/gcp/subject-token"  # noqa: S105 - a path
SUBJECT_TOKEN_FIELD = "subject_token"  # noqa: S105 - a field name
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a type URN
# A direct-mode token whose expiry cannot be read is re-read this often.
UNKNOWN_LIFETIME = 300.0


@dataclass(frozen=True)
class SubjectToken:
    token: str
    expires_at: float


def jwt_expiry(token: str, now: float) -> float:
    """The `exp` of a JWT, read without verifying it (only to know when to re-read it; the
    cloud verifies), else `now + UNKNOWN_LIFETIME`."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"]
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return now + UNKNOWN_LIFETIME
    return float(exp) if isinstance(exp, int | float) else now + UNKNOWN_LIFETIME


def external_account_config(
    *,
    audience: str,
    subject_token_url: str,
    secret: str,
    token_url: str,
    impersonation_url: str | None,
    lifetime: int,
) -> dict[str, object]:
    """The `external_account` credential configuration (google-auth external_account.py and
    identity_pool.py read exactly these keys)."""
    config: dict[str, object] = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": token_url,
        "credential_source": {
            "url": subject_token_url,
            # identity_pool sends these headers as given: the secret is the whole value.
            "headers": {"Authorization": secret},
            "format": {"type": "json", "subject_token_field_name": SUBJECT_TOKEN_FIELD},
        },
    }
    if impersonation_url is not None:
        config["service_account_impersonation_url"] = impersonation_url
        config["service_account_impersonation"] = {"token_lifetime_seconds": lifetime}
    return config


class GcpSubjectTokenEndpoint:
    def __init__(
        self,
        cache: CredentialCache[SubjectToken],
        secret: str,
        guard: Guard,
        audit: AuditLog,
        who: Mapping[str, str | None],
        audience: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._secret = secret_bytes(secret)
        self._guard = guard
        self._audit = audit
        self._who = dict(who)
        self._audience = audience
        self._wall = wall
        self._served_expiry: float | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get(SUBJECT_TOKEN_PATH, self.subject_token)]

    async def subject_token(self, request: web.Request) -> web.Response:
        if not secrets_match(request.headers.get("Authorization"), self._secret):
            return self._guard.refuse(
                request,
                401,
                "missing or wrong Authorization",
                "; use GOOGLE_APPLICATION_CREDENTIALS from `credsidecar env`",
            )
        try:
            entry = self._cache.current_entry()
        except CredsidecarError as exc:
            status, headers = answer_status(exc)
            return web.json_response(exc.to_json(), status=status, headers=headers)
        if self._served_expiry != entry.wall_expiry:  # one audit line per token served
            self._served_expiry = entry.wall_expiry
            self._audit.event("credentials.served", **self._who, provider="gcp",
                              kind="subject_token", identity=self._audience,
                              expiry=int(entry.wall_expiry), path=request.path)  # fmt: skip
        expires_in = max(0, int(entry.wall_expiry - self._wall()))
        return web.json_response({SUBJECT_TOKEN_FIELD: entry.value.token, "expires_in": expires_in})
