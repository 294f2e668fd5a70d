"""A GCP access token from a job's external-account file (a sidecar started with
`--secret-only` writes one instead of serving the metadata server).

The file says what google-auth does with it (endpoints/gcp_external.py writes it): fetch the
subject token from `credential_source.url` with its headers, exchange it at `token_url`, then
impersonate the service account of `service_account_impersonation_url`. The exchange and the
impersonation are clouds/gcp.py's `GcpExchanger` (the sidecar's own), fed by a supplier that
reads the subject token from the URL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from credsidecar.clouds.contracts import GCP_CLOUD_PLATFORM
from credsidecar.clouds.gcp import GcpExchanger, GcpSettings
from credsidecar.clouds.upstream_http import UpstreamResponse, request
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, Unavailable
from credsidecar.launch.exchange import FederatedToken

__all__ = ["ExternalAccount", "sidecar_refusal"]

# .../v1/projects/-/serviceAccounts/EMAIL:generateAccessToken -> (IAM base URL, EMAIL)
_IMPERSONATION = re.compile(r"(?P<base>.+)/v1/projects/[^/]+/serviceAccounts/(?P<sa>[^/:]+)"
                            r":generateAccessToken")  # fmt: skip


def sidecar_refusal(resp: UpstreamResponse, what: str) -> CredsidecarError:
    """The sidecar's 503/403 body carries its cause: quote it (it is written for the user)."""
    body = resp.fields()
    cause = str(body.get("error_description") or body.get("message") or resp.text[:300]).strip()
    message = f"the sidecar answered HTTP {resp.status} for {what}: {cause or 'no cause given'}"
    if resp.status in (401, 403, 400):
        return Forbidden(message)
    return Unavailable(message)


class _UrlSubjectToken:
    """`TokenSupplier` reading the subject token where the file's credential_source says."""

    def __init__(self, source: Mapping[str, Any], session: aiohttp.ClientSession) -> None:
        self._url = str(source.get("url") or "")
        self._headers = {str(k): str(v) for k, v in dict(source.get("headers") or {}).items()}
        fmt = source.get("format") or {}
        self._field = fmt.get("subject_token_field_name") if fmt.get("type") == "json" else None
        self._session = session

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        resp = await request(self._session, "GET", self._url, "the sidecar (subject token)",
                             headers=self._headers)  # fmt: skip
        if resp.status != 200:
            raise sidecar_refusal(resp, "the GCP subject token")
        value = resp.fields().get(str(self._field)) if self._field else resp.text.strip()
        if not isinstance(value, str) or not value:
            raise Unavailable(f"the subject token answer at {self._url} holds no token")
        return FederatedToken(value, None, {})


class ExternalAccount:
    """One external-account file: its service account (the label) and an access token."""

    def __init__(self, config: Mapping[str, Any], session: aiohttp.ClientSession) -> None:
        source = config.get("credential_source")
        if config.get("type") != "external_account" or not isinstance(source, Mapping):
            raise BadRequest("GOOGLE_APPLICATION_CREDENTIALS is not an external-account file "
                             "with a URL credential source (as the sidecar writes)")  # fmt: skip
        impersonation = str(config.get("service_account_impersonation_url") or "")
        match = _IMPERSONATION.fullmatch(impersonation)
        self.service_account = match.group("sa") if match else None
        settings = GcpSettings(
            audience=str(config.get("audience") or ""),
            service_account=self.service_account,
            sts_url=str(config.get("token_url") or ""),
            iam_url=match.group("base") if match else GcpSettings.iam_url,
        )
        self.label = self.service_account or f"the job's external account ({settings.audience})"
        supplier = _UrlSubjectToken(source, session)
        self._exchanger = GcpExchanger(settings, supplier, session, "this job")

    @classmethod
    async def from_file(cls, path: str, session: aiohttp.ClientSession) -> ExternalAccount:
        try:
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
            config = json.loads(text)
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot read GOOGLE_APPLICATION_CREDENTIALS {path}: {exc}") from exc
        if not isinstance(config, dict):
            raise BadRequest(f"GOOGLE_APPLICATION_CREDENTIALS {path} is not a JSON object")
        return cls(config, session)

    async def access_token(self) -> str:
        found = await self._exchanger.access_token((GCP_CLOUD_PLATFORM,))
        return found.access_token
