"""AWS: STS AssumeRoleWithWebIdentity with the federated token, over the STS Query API.

AssumeRoleWithWebIdentity is unsigned (the web identity token is the credential), so one form
POST does what boto3 would: `import boto3` alone costs ~0.3-0.5 s and ~26 MB of RSS here, paid
at every sidecar start, for this single call. The request and the XML answer follow the STS API
reference (Query API, version 2011-06-15); errors keep botocore's codes and our explanations.

XML safety: the answer comes from STS over TLS (or the sandbox), is bounded by
`upstream_http.MAX_RESPONSE_BYTES`, and is parsed by ElementTree, which resolves no external
entities; expat >= 2.4 also refuses entity-expansion bombs.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from credsidecar.clouds.contracts import AWS_DEFAULT_DURATION, AwsCredentials
from credsidecar.clouds.remedies import Presented, aws_fix, supplier_refusal
from credsidecar.clouds.upstream_http import UpstreamResponse, post
from credsidecar.errors import (
    BadRequest,
    ConfigError,
    CredsidecarError,
    Forbidden,
    InvalidGrant,
    Unavailable,
    bounded,
)
from credsidecar.launch.exchange import TokenSupplier
from credsidecar.launch.grants import ROLE_ARN

__all__ = ["AwsCredentials", "AwsExchanger", "AwsSettings", "role_session_name"]

# AssumeRoleWithWebIdentity accepts 900..43200 s; the sandbox accepts shorter ones for tests.
DEFAULT_DURATION = AWS_DEFAULT_DURATION
STS_VERSION = "2011-06-15"
_NS = {"sts": f"https://sts.amazonaws.com/doc/{STS_VERSION}/"}
_SESSION_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)
_ROLE_ARN = ROLE_ARN  # the issuer's policy checks the same pattern


@dataclass(frozen=True)
class AwsSettings:
    role_arn: str
    audience: str = "sts.amazonaws.com"
    identity_name: str | None = None
    session_name: str = "credsidecar"
    duration: int = DEFAULT_DURATION
    region: str = "us-east-1"
    sts_endpoint: str | None = None  # None: the regional endpoint for `region`
    session_policy: str | None = None


def role_session_name(user: str, run: str | None) -> str:
    """`user@run`, within STS's 2-64 characters of [\\w+=,.@-]; CloudTrail shows it."""
    raw = f"{user}@{run}" if run else user
    name = _SESSION_CHARS.sub("-", raw)[:64]
    return name if len(name) >= 2 else f"{name}--"[:2]


@dataclass(frozen=True)
class StsFailure:
    """An STS error answer: `<ErrorResponse><Error><Type/><Code/><Message/>`."""

    status: int
    code: str
    message: str


class AwsExchanger:
    def __init__(
        self,
        settings: AwsSettings,
        supplier: TokenSupplier,
        session: aiohttp.ClientSession,
        who: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        match = _ROLE_ARN.fullmatch(settings.role_arn)
        if not match:
            raise ConfigError(f"{settings.role_arn!r} is not an IAM role ARN")
        self.settings = settings
        self._account = match.group(1)
        self._supplier = supplier
        self._session = session
        self._who = who
        self._clock = clock
        endpoint = settings.sts_endpoint or f"https://sts.{settings.region}.amazonaws.com"
        self.endpoint = endpoint
        self._url = endpoint.rstrip("/") + "/"

    @property
    def description(self) -> str:
        return f"{self._who} as {self.settings.role_arn}"

    async def fetch(self) -> AwsCredentials:
        s = self.settings
        try:
            federated = await self._supplier.token(s.audience, "aws", s.identity_name)
        except CredsidecarError as exc:
            target = (
                f"aws identity {s.identity_name!r} ({s.role_arn})"
                if s.identity_name
                else s.role_arn
            )
            raise supplier_refusal(exc, self._who, target) from exc
        # No credentials are attached: the sidecar's own environment is never searched for any.
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": STS_VERSION,
            "RoleArn": s.role_arn,
            "RoleSessionName": s.session_name,
            "WebIdentityToken": federated.token,
            "DurationSeconds": str(s.duration),
        }
        if s.session_policy:
            form["Policy"] = s.session_policy
        resp = await post(self._session, self._url, "AWS STS", form=form, who=self._who,
                          hint="retrying")  # fmt: skip
        if resp.status != 200:
            raise self._explain(_failure(resp), Presented.of(federated.token, s.audience))
        return self._credentials(resp)

    def _credentials(self, resp: UpstreamResponse) -> AwsCredentials:
        root = _xml(resp.body)
        result = root.find("sts:AssumeRoleWithWebIdentityResult", _NS) if root is not None else None
        creds = result.find("sts:Credentials", _NS) if result is not None else None

        def field(parent: ET.Element | None, name: str) -> str:
            value = parent.findtext(f"sts:{name}", None, _NS) if parent is not None else None
            if not value:
                raise Unavailable(
                    f"AWS STS at {self.endpoint} answered {self._who} without {name}; retrying"
                )
            return value.strip()

        expiration = field(creds, "Expiration")
        try:
            expires_at = datetime.fromisoformat(expiration).timestamp()
        except ValueError as exc:
            raise Unavailable(
                f"AWS STS at {self.endpoint} answered an Expiration that is not ISO 8601 "
                f"({expiration[:40]!r}); retrying"
            ) from exc
        user = result.find("sts:AssumedRoleUser", _NS) if result is not None else None
        assumed = user.findtext("sts:Arn", None, _NS) if user is not None else None
        return AwsCredentials(
            access_key_id=field(creds, "AccessKeyId"),
            secret_access_key=field(creds, "SecretAccessKey"),
            session_token=field(creds, "SessionToken"),
            expires_at=expires_at,
            role_arn=self.settings.role_arn,
            assumed_role_arn=assumed.strip() if assumed else self.settings.role_arn,
            account_id=self._account,
        )

    def _explain(self, failure: StsFailure, seen: Presented) -> CredsidecarError:
        """Turns an STS error into one sentence: who, which role, the cause in IAM's terms and
        the fix (remedies.py), with STS's own words last."""
        code, message = bounded(failure.code, 64), bounded(failure.message)
        lower = message.lower()
        s = self.settings
        role = s.role_arn
        named = f" (aws identity {s.identity_name!r})" if s.identity_name else ""
        head = f"{self._who} may not assume {role}{named}"
        said = f"STS said: {code}: {message}"
        if code == "AccessDenied":
            if "does not exist" in lower or "nosuchentity" in lower:
                return Forbidden(
                    f"{head}: the role does not exist; {aws_fix('no-role', role, seen)}. {said}"
                )
            return Forbidden(
                f"{head}: the role's trust policy does not trust issuer {seen.issuer} with "
                f"audience {seen.audience} for sub {seen.subject}; "
                f"{aws_fix('trust', role, seen)}. {said}"
            )
        if code == "InvalidIdentityToken":
            if "no openidconnect provider" in lower:
                return Forbidden(
                    f"{head}: account {self._account} has no IAM OIDC provider for issuer "
                    f"{seen.issuer}; {aws_fix('no-provider', role, seen)}. {said}"
                )
            if "audience" in lower:
                return Forbidden(
                    f"{head}: audience {seen.audience} is not a client ID of the account's OIDC "
                    f"provider for {seen.issuer}; {aws_fix('audience', role, seen)}. {said}"
                )
            return InvalidGrant(
                f"{head}: STS could not validate the token from issuer {seen.issuer} (its "
                f"signature, keys or claims); {aws_fix('unverifiable', role, seen)}. {said}"
            )
        if code in ("ExpiredTokenException", "ExpiredToken"):
            return InvalidGrant(
                f"{head}: STS says the token from {seen.issuer} expired; "
                f"{aws_fix('expired', role, seen)}. {said}"
            )
        if code == "IDPCommunicationError":
            return Unavailable(
                f"{head} right now: AWS could not fetch the discovery document or keys of "
                f"issuer {seen.issuer}; {aws_fix('idp-unreachable', role, seen)}. {said}"
            )
        if code in ("Throttling", "ThrottlingException", "RequestLimitExceeded") or (
            failure.status == 429
        ):
            return Unavailable(
                f"AWS STS is throttling {self._who} for {role}; retrying later. {said}",
                retry_after=10,
            )
        if code in ("ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"):
            return BadRequest(
                f"{head}: STS rejected the request ({code}); check the identity's "
                f"session_policy and session name in the policy. {said}"
            )
        if failure.status >= 500:
            return Unavailable(f"AWS STS failed for {self._who} as {role}; retrying. {said}")
        if code == "RegionDisabledException":
            return Forbidden(
                f"{head}: STS is not activated in region {s.region} for the "
                f"account; activate it in IAM's account settings or pass --aws-sts-endpoint "
                f"for an active region. {said}"
            )
        return Forbidden(f"{head}: {code}: {message}")


def _failure(resp: UpstreamResponse) -> StsFailure:
    """Reads an error answer; a body that is not STS's XML (a proxy's page) is quoted."""
    root = _xml(resp.body)
    error = root.find("{*}Error") if root is not None else None
    if error is None:
        return StsFailure(resp.status, f"HTTP{resp.status}", resp.text[:300].strip())
    code = (error.findtext("{*}Code") or "").strip() or f"HTTP{resp.status}"
    return StsFailure(resp.status, code, (error.findtext("{*}Message") or "").strip())


def _xml(body: bytes) -> ET.Element | None:
    """The parsed answer, or None when it is not XML (see the module docstring on safety)."""
    try:
        return ET.fromstring(body)  # noqa: S314 - a bounded STS answer; no external entities
    except ET.ParseError:
        return None
