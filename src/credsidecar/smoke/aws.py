"""AWS checks: the container endpoint and the IMDSv2 flow, as botocore, Go, JS and Java call them
(DESIGN.md, "Endpoint contracts", AWS)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from credsidecar.smoke.client import Client, Reply
from credsidecar.smoke.model import Found, Violation

__all__ = ["CONTAINER_VARIABLE", "ENVIRONMENT_OVERRIDES", "IMDS_VARIABLE", "container",
           "imds_extended", "imds_role", "imds_session_required", "imds_token"]  # fmt: skip

CONTAINER_VARIABLE = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
IMDS_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
TOKEN_VARIABLE = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # noqa: S105 - a variable name
TOKEN_FILE_VARIABLE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # noqa: S105 - a variable name
# Variables that win over both endpoints in the SDKs' credential chains (botocore tries the
# relative URI before the full one).
ENVIRONMENT_OVERRIDES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)  # fmt: skip
# Hosts botocore (and Go, JS) accept in a plain-http full URI, besides loopback addresses.
_CONTAINER_HOSTS = {"localhost", "169.254.170.2", "169.254.170.23", "fd00:ec2::23"}
# botocore refreshes 15 minutes before expiry and rewrites IMDS credentials that close to it:
# served credentials must have more than 20 minutes left (DESIGN.md).
MIN_REMAINING = 20 * 60
# Strict RFC 3339 in UTC with Z: the JS SDK needs it, botocore's IMDS path parses this shape.
_EXPIRATION = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
IMDS_TTL = 21600  # what botocore asks for
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
_CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")


def _field(body: Mapping[str, object], name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise Violation(f"{what} has no {name} (a non-empty string the SDKs read)")
    return value


def _lifetime(body: Mapping[str, object], what: str, now: float) -> float:
    expiration = _field(body, "Expiration", what)
    if not _EXPIRATION.match(expiration):
        raise Violation(
            f"{what}: Expiration {expiration!r} is not YYYY-MM-DDTHH:MM:SSZ (strict RFC 3339 "
            "in UTC, which the JS SDK and botocore's IMDS path parse)"
        )
    expires = datetime.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    remaining = expires.timestamp() - now
    if remaining <= 0:
        raise Violation(f"{what}: Expiration {expiration} is in the past: expired credentials")
    if remaining <= MIN_REMAINING:
        raise Violation(
            f"{what}: Expiration {expiration} leaves {int(remaining)} s; the sidecar must serve "
            f"more than {MIN_REMAINING // 60} minutes (botocore refreshes 15 minutes before "
            "expiry)"
        )
    return remaining


def _credentials(reply: Reply, now: float) -> tuple[dict[str, object], float]:
    body = reply.expect(200).json_object()
    for name in _CREDENTIAL_FIELDS:
        _field(body, name, reply.what)
    return body, _lifetime(body, reply.what, now)


def _who(body: Mapping[str, object], role: str | None = None) -> str:
    # The key id's prefix is enough to find it in CloudTrail; the secret and token never show.
    parts = [f"role {role}"] if role else []
    parts.append(f"key {str(body['AccessKeyId'])[:8]}...")
    account = body.get("AccountId")
    if isinstance(account, str) and account:
        parts.append(f"account {account}")
    return ", ".join(parts)


def _container_secret(env: Mapping[str, str]) -> str | None:
    """The Authorization value: the file first (botocore, Go, JS), else the variable (Java)."""
    variable = env.get(TOKEN_VARIABLE)
    path = env.get(TOKEN_FILE_VARIABLE)
    if not path:
        return variable
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise Violation(
            f"{TOKEN_FILE_VARIABLE} {path} cannot be read ({exc.strerror}); botocore, Go and JS "
            "send its content as the Authorization header"
        ) from None
    if raw != raw.rstrip(b"\r\n"):
        raise Violation(
            f"{TOKEN_FILE_VARIABLE} {path} ends with a newline; botocore sends the file's bytes "
            "as the header value, so the secret must have none"
        )
    secret = raw.decode("utf-8", "replace")
    if variable is not None and variable != secret:
        raise Violation(
            f"{TOKEN_VARIABLE} and the file {TOKEN_FILE_VARIABLE} names hold different secrets; "
            "Java sends the variable, the other SDKs the file: both must be the same"
        )
    return secret


def _container_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and host not in _CONTAINER_HOSTS:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise Violation(
                f"{CONTAINER_VARIABLE} {url} is plain http to {host!r}; the SDKs accept http "
                "only to a loopback address (use 127.0.0.1)"
            )
    return url


def container(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    url = _container_url(env[CONTAINER_VARIABLE])
    secret = _container_secret(env)
    if secret is None:
        raise Violation(
            f"neither {TOKEN_FILE_VARIABLE} nor {TOKEN_VARIABLE} is set; the sidecar answers only "
            "requests carrying its secret (eval the output of `credsidecar env`)"
        )
    refused = client.request("GET", url)
    if refused.status == 200:
        raise Violation(f"{refused.what} answered 200 without Authorization: the per-job "
                        "secret is not enforced")  # fmt: skip
    body, remaining = _credentials(client.request("GET", url, {"Authorization": secret}), now())
    return Found(_who(body), remaining)


def _imds_base(env: Mapping[str, str]) -> str:
    base = env[IMDS_VARIABLE]
    if base.endswith("/"):
        raise Violation(
            f"{IMDS_VARIABLE} {base} ends with a slash; SDKs append /latest/... to it as given"
        )
    return base


def _session(base: str, client: Client) -> str:
    reply = client.request("PUT", f"{base}/latest/api/token", {TTL_HEADER: str(IMDS_TTL)})
    token = reply.expect(200).text()
    if not token or token != token.strip():
        raise Violation(f"{reply.what} answered an empty or padded session token")
    return token


def imds_token(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    base = _imds_base(env)
    reply = client.request("PUT", f"{base}/latest/api/token", {TTL_HEADER: str(IMDS_TTL)})
    if not reply.expect(200).text().strip():
        raise Violation(f"{reply.what} answered an empty session token")
    echoed = reply.header(TTL_HEADER)
    if echoed != str(IMDS_TTL):
        raise Violation(
            f"{reply.what} did not echo {TTL_HEADER} (got {echoed!r}, sent {IMDS_TTL}); the Go "
            "SDK fails without it"
        )
    return Found(note=f"TTL {IMDS_TTL} echoed")


def imds_session_required(env: Mapping[str, str], client: Client,
                          now: Callable[[], float]) -> Found:  # fmt: skip
    base = _imds_base(env)
    reply = client.request("GET", f"{base}/latest/meta-data/iam/security-credentials/")
    reply.expect(401, " to a GET without X-aws-ec2-metadata-token (IMDSv2 requires a session)")
    return Found(note="refused without a session token")


def _role_flow(env: Mapping[str, str], client: Client, now: Callable[[], float],
               listing: str) -> tuple[str, dict[str, object], float]:  # fmt: skip
    base = _imds_base(env)
    headers = {TOKEN_HEADER: _session(base, client)}
    reply = client.request("GET", f"{base}/latest/meta-data/iam/{listing}/", headers)
    role = reply.expect(200).text()
    if role != role.rstrip():
        raise Violation(
            f"{reply.what} answered the role name with trailing whitespace ({role!r}); SDKs "
            "use the body as the name, as is"
        )
    if not role or "\n" in role:
        raise Violation(f"{reply.what} answered {role[:80]!r}, not one role name")
    reply = client.request("GET", f"{base}/latest/meta-data/iam/{listing}/{role}", headers)
    body, remaining = _credentials(reply, now())
    if body.get("Code") != "Success":
        raise Violation(f"{reply.what}: Code is {body.get('Code')!r}, not 'Success'")
    if body.get("Type") != "AWS-HMAC":
        raise Violation(f"{reply.what}: Type is {body.get('Type')!r}, not 'AWS-HMAC'")
    _field(body, "LastUpdated", reply.what)
    return role, body, remaining


def imds_role(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    role, body, remaining = _role_flow(env, client, now, "security-credentials")
    return Found(_who(body, role), remaining)


def imds_extended(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    """Go and newer JS SDKs try the -extended paths first."""
    role, body, remaining = _role_flow(env, client, now, "security-credentials-extended")
    return Found(_who(body, role), remaining)
