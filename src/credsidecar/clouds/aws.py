"""AWS: STS AssumeRoleWithWebIdentity with the federated token, through boto3 off the loop."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
)

from credsidecar.clouds.contracts import AWS_DEFAULT_DURATION, AwsCredentials
from credsidecar.clouds.federation import TokenSupplier
from credsidecar.errors import (
    BadRequest,
    ConfigError,
    CredsidecarError,
    Forbidden,
    InvalidGrant,
    Unavailable,
)

__all__ = ["AwsCredentials", "AwsExchanger", "AwsSettings", "role_session_name"]

# AssumeRoleWithWebIdentity accepts 900..43200 s; the sandbox accepts shorter ones for tests.
DEFAULT_DURATION = AWS_DEFAULT_DURATION
MIN_STS_DURATION = 900
_SESSION_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)
_ROLE_ARN = re.compile(r"arn:aws[\w-]*:iam::(\d{12}):role/([\w+=,.@/-]+)", re.ASCII)


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


class AwsExchanger:
    def __init__(
        self,
        settings: AwsSettings,
        supplier: TokenSupplier,
        who: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        match = _ROLE_ARN.fullmatch(settings.role_arn)
        if not match:
            raise ConfigError(f"{settings.role_arn!r} is not an IAM role ARN")
        self.settings = settings
        self._account = match.group(1)
        self._supplier = supplier
        self._who = who
        self._clock = clock
        endpoint = settings.sts_endpoint or f"https://sts.{settings.region}.amazonaws.com"
        # Unsigned: AssumeRoleWithWebIdentity needs no AWS credentials, and the sidecar's own
        # environment must never be searched for any.
        self._sts = boto3.session.Session().client(
            "sts",
            region_name=settings.region,
            endpoint_url=endpoint,
            config=Config(
                signature_version=UNSIGNED,
                # botocore enforces STS's 900 s minimum client-side; the sandbox allows less.
                parameter_validation=settings.duration >= MIN_STS_DURATION,
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=15,
            ),
        )
        self.endpoint = endpoint

    @property
    def description(self) -> str:
        return f"{self._who} as {self.settings.role_arn}"

    async def fetch(self) -> AwsCredentials:
        s = self.settings
        federated = await self._supplier.token(s.audience, "aws", s.identity_name)
        kwargs: dict[str, Any] = {
            "RoleArn": s.role_arn,
            "RoleSessionName": s.session_name,
            "WebIdentityToken": federated.token,
            "DurationSeconds": s.duration,
        }
        if s.session_policy:
            kwargs["Policy"] = s.session_policy
        try:
            response = await asyncio.to_thread(self._sts.assume_role_with_web_identity, **kwargs)
        except ClientError as exc:
            raise self._explain(exc) from exc
        except ParamValidationError as exc:
            raise BadRequest(f"the STS request for {self._who} is invalid: {exc}") from exc
        except EndpointConnectionError as exc:
            raise Unavailable(
                f"AWS STS at {self.endpoint} is unreachable for {self._who}: {exc}; retrying"
            ) from exc
        except BotoCoreError as exc:
            raise Unavailable(f"AWS STS call for {self._who} failed: {exc}; retrying") from exc
        creds: Mapping[str, Any] = response["Credentials"]
        return AwsCredentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expires_at=creds["Expiration"].timestamp(),
            role_arn=s.role_arn,
            assumed_role_arn=response.get("AssumedRoleUser", {}).get("Arn", s.role_arn),
            account_id=self._account,
        )

    def _explain(self, exc: ClientError) -> CredsidecarError:
        """Turns an STS error into one sentence naming the user, the role and the way out."""
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        lower = message.lower()
        role = self.settings.role_arn
        head = f"{self._who} may not assume {role}"
        if code == "AccessDenied":
            if "does not exist" in lower or "nosuchentity" in lower:
                return Forbidden(f"{head}: the role does not exist ({message})")
            return Forbidden(
                f"{head}: the role's trust policy does not allow this web identity (its "
                f"Federated principal must be the issuer's OIDC provider and its conditions must "
                f"match sub and aud={self.settings.audience}); STS said: {message}"
            )
        if code == "InvalidIdentityToken":
            if "no openidconnect provider" in lower:
                return Forbidden(
                    f"{head}: the account does not trust the issuer (no IAM OIDC provider for "
                    f"it); create one for the issuer URL. STS said: {message}"
                )
            if "audience" in lower:
                return Forbidden(
                    f"{head}: audience {self.settings.audience!r} is not a client ID of the "
                    f"account's OIDC provider for the issuer. STS said: {message}"
                )
            return InvalidGrant(f"{head}: STS rejected the web identity token: {message}")
        if code == "ExpiredTokenException":
            return InvalidGrant(
                f"{head}: STS says the web identity token expired ({message}); check this "
                "host's clock"
            )
        if code == "IDPCommunicationError":
            return Unavailable(
                f"{head} right now: AWS could not reach the issuer's discovery/JWKS ({message})"
            )
        if code in ("Throttling", "ThrottlingException", "RequestLimitExceeded"):
            return Unavailable(f"AWS STS is throttling {self._who}: {message}", retry_after=10)
        if code in ("ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"):
            return BadRequest(f"{head}: STS rejected the request ({code}): {message}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:
            return Unavailable(f"AWS STS failed for {self._who} ({code}): {message}")
        return Forbidden(f"{head}: {code}: {message}")
