"""Azure checks: the App Service managed-identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER)
and the IMDS path under AZURE_POD_IDENTITY_AUTHORITY_HOST, as azure-identity, MSAL and az call
them (DESIGN.md, "Endpoint contracts", Azure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import quote

from credsidecar.smoke.claims import peek_claims
from credsidecar.smoke.client import Client, Reply
from credsidecar.smoke.model import Found, Violation

__all__ = ["APP_SERVICE_VARIABLE", "ENVIRONMENT_OVERRIDES", "IMDS_VARIABLE", "app_service", "imds"]

APP_SERVICE_VARIABLE = "IDENTITY_ENDPOINT"
HEADER_VARIABLE = "IDENTITY_HEADER"
IMDS_VARIABLE = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
IMDS_PATH = "/metadata/identity/oauth2/token"  # what azure-identity appends to the host
# Each wins over managed identity in DefaultAzureCredential's chain or in az. (MSI_ENDPOINT
# and MSI_SECRET do not: the sidecar exports them for legacy clients, and IDENTITY_ENDPOINT
# comes first wherever both are read.)
ENVIRONMENT_OVERRIDES = (
    "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
)  # fmt: skip
# azure-identity refreshes a token 5 minutes before expires_on; less left is a token it would
# ask for again at every use.
MIN_REMAINING = 5 * 60


def _token(reply: Reply, resource: str, now: float, *, client_id: bool) -> Found:
    body = reply.expect(200).json_object()
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise Violation(f"{reply.what} has no access_token")
    expires_on = body.get("expires_on")
    # Epoch seconds as a string, as both services send; MSAL and azure-identity int() it.
    if not isinstance(expires_on, str) or not expires_on.isascii() or not expires_on.isdigit():
        raise Violation(
            f"{reply.what}: expires_on is {expires_on!r}, not epoch seconds as a string"
        )
    remaining = int(expires_on) - now
    if remaining <= 0:
        raise Violation(f"{reply.what}: expires_on {expires_on} is in the past: an expired token")
    if remaining < MIN_REMAINING:
        raise Violation(
            f"{reply.what}: expires_on leaves {int(remaining)} s; azure-identity refreshes "
            f"{MIN_REMAINING // 60} minutes before expiry"
        )
    if body.get("resource") != resource:
        raise Violation(f"{reply.what}: resource is {body.get('resource')!r}, not {resource!r}")
    if body.get("token_type") != "Bearer":
        raise Violation(f"{reply.what}: token_type is {body.get('token_type')!r}, not 'Bearer'")
    if client_id and not body.get("client_id"):
        raise Violation(f"{reply.what} has no client_id (MSAL reads it)")
    claims = peek_claims(access, f"the access_token from {reply.what}")
    if not claims.get("tid"):
        raise Violation(f"the access_token from {reply.what} has no tid claim (az decodes it)")
    who = body.get("client_id") or claims.get("appid") or claims.get("azp") or "?"
    return Found(f"client {who}, tenant {claims['tid']}", remaining)


def app_service(env: Mapping[str, str], client: Client, now: Callable[[], float],
                resource: str) -> Found:  # fmt: skip
    endpoint = env[APP_SERVICE_VARIABLE]
    secret = env.get(HEADER_VARIABLE)
    if not secret:
        raise Violation(f"{APP_SERVICE_VARIABLE} is set but {HEADER_VARIABLE} is not; SDKs "
                        "need both for the App Service contract")  # fmt: skip
    separator = "&" if "?" in endpoint else "?"
    url = f"{endpoint}{separator}api-version=2019-08-01&resource={quote(resource, safe='')}"
    refused = client.request("GET", url)
    if refused.status == 200:
        raise Violation(f"{refused.what} answered 200 without X-IDENTITY-HEADER: the per-job "
                        "secret is not enforced")  # fmt: skip
    return _token(client.request("GET", url, {"X-IDENTITY-HEADER": secret}), resource, now(),
                  client_id=True)  # fmt: skip


def imds(env: Mapping[str, str], client: Client, now: Callable[[], float],
         resource: str) -> Found:  # fmt: skip
    host = env[IMDS_VARIABLE].rstrip("/")
    url = f"{host}{IMDS_PATH}?api-version=2018-02-01&resource={quote(resource, safe='')}"
    probe = client.request("GET", url)
    # azure-identity probes without the header and needs this exact answer, quickly.
    body = probe.expect(400, " to a request without Metadata: true").json_object()
    if body.get("error") != "invalid_request":
        raise Violation(f"{probe.what} without Metadata: true answered error "
                        f"{body.get('error')!r}, not 'invalid_request'")  # fmt: skip
    return _token(client.request("GET", url, {"Metadata": "true"}), resource, now(),
                  client_id=False)  # fmt: skip
