"""Entra's token errors as the sandbox Entra raises them, and their JSON answer.

One `EntraError` (AADSTS code, OAuth error, message, HTTP status) and a constructor per case,
worded as Entra words them, so that the sidecar's error mapping can be tested against the
same texts real Entra sends:

    90002    invalid_request         tenant not found
    900144   invalid_request         a required form field is missing
    70003    unsupported_grant_type
    700016   unauthorized_client     no application or identity with that client id
    7000218  invalid_client          neither client_assertion nor client_secret
    70002    invalid_client          wrong client_assertion_type
    1002012  invalid_scope           a client credentials scope without /.default
    500011   invalid_resource        unknown resource
    50027    invalid_request         the assertion is not a JWT
    70021    invalid_client          no federated credential matches issuer/subject/audience
    50166    invalid_client          the issuer's discovery or JWKS is unreachable
    7000272  invalid_client          the signing key is not in the issuer's JWKS
    50013    invalid_client          bad signature
    700024   invalid_client          outside the assertion's validity
    90033    temporarily_unavailable (503) a test's injected outage

(Entra has since split 70021 into 700211/700212/700213, each naming only the first of issuer,
audience or subject that matched nothing; the sandbox keeps the older, fuller message.)
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence

from aiohttp import web

__all__ = ["EntraError", "error_response"]

FIC_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
CERT_DOCS = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"


class EntraError(Exception):
    def __init__(self, code: int, error: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.error, self.message, self.status = code, error, message, status

    @classmethod
    def tenant_not_found(cls, tenant: str) -> EntraError:
        return cls(
            90002, "invalid_request", f"Tenant '{tenant}' not found. Check to make sure you have "
            "the correct tenant ID and are signing into the correct cloud. Check with your "
            "subscription administrator, this may happen if there are no active subscriptions "
            "for the tenant."
        )  # fmt: skip

    @classmethod
    def missing(cls, name: str) -> EntraError:
        return cls(
            900144, "invalid_request",
            f"The request body must contain the following parameter: '{name}'.",
        )  # fmt: skip

    @classmethod
    def unsupported_grant(cls, grant: str) -> EntraError:
        return cls(
            70003, "unsupported_grant_type", f"The app requested an unsupported grant type "
            f"'{grant}'. (The sandbox supports client_credentials with a client assertion.)"
        )  # fmt: skip

    @classmethod
    def app_not_found(cls, client_id: str, tenant: str) -> EntraError:
        return cls(
            700016, "unauthorized_client", f"Application with identifier '{client_id}' was not "
            f"found in the directory '{tenant}'. This can happen if the application has not "
            "been installed by the administrator of the tenant or consented to by any user in "
            "the tenant. You may have sent your authentication request to the wrong tenant."
        )  # fmt: skip

    @classmethod
    def no_client_credential(cls) -> EntraError:
        return cls(
            7000218, "invalid_client", "The request body must contain the following parameter: "
            "'client_assertion' or 'client_secret'."
        )  # fmt: skip

    @classmethod
    def bad_assertion_type(cls, expected: str) -> EntraError:
        return cls(
            70002, "invalid_client",
            f"Error validating credentials. client_assertion_type must be {expected}.",
        )  # fmt: skip

    @classmethod
    def invalid_scope(cls, scope: str) -> EntraError:
        return cls(
            1002012, "invalid_scope", f"The provided value for scope {scope} is not valid. "
            "Client credential flows must have a scope value with /.default suffixed to the "
            "resource identifier (application ID URI)."
        )  # fmt: skip

    @classmethod
    def unknown_resource(cls, resource: str, tenant: str) -> EntraError:
        return cls(
            500011, "invalid_resource", f"The resource principal named {resource} was not found "
            f"in the tenant named {tenant}. This can happen if the application has not been "
            "installed by the administrator of the tenant or consented to by any user in the "
            "tenant. You might have sent your authentication request to the wrong tenant."
        )  # fmt: skip

    @classmethod
    def malformed(cls) -> EntraError:
        return cls(50027, "invalid_request", "JWT token is invalid or malformed.")

    @classmethod
    def no_matching_credential(
        cls, issuer: str, subject: str, audiences: Sequence[str]
    ) -> EntraError:
        return cls(
            70021, "invalid_client", "No matching federated identity record found for presented "
            f"assertion. Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. "
            f"Assertion Audience: '{','.join(audiences)}'. {FIC_DOCS}"
        )  # fmt: skip

    @classmethod
    def issuer_unreachable(cls, issuer: str) -> EntraError:
        return cls(
            50166, "invalid_client", "Request to External OIDC endpoint failed. (The sandbox "
            f"could not fetch {issuer}/.well-known/openid-configuration or its jwks_uri.)"
        )  # fmt: skip

    @classmethod
    def unknown_key(cls, kid: object, issuer: str) -> EntraError:
        return cls(
            7000272, "invalid_client", f"The certificate with identifier {kid} used to sign the "
            f"federated credential could not be found in the metadata of identity provider "
            f"{issuer}. Please validate that your Identity Provider's metadata exposes the key "
            "used to sign the incoming token."
        )  # fmt: skip

    @classmethod
    def bad_signature(cls) -> EntraError:
        return cls(
            50013, "invalid_client", "Assertion failed signature validation. [Reason - The "
            "provided signature value did not match the expected signature value.]"
        )  # fmt: skip

    @classmethod
    def time_range(cls, now: float, valid_from: float, expiry: float) -> EntraError:
        return cls(
            700024, "invalid_client", "Client assertion is not within its valid time range. "
            f"Current time: {_clock_text(now)}, assertion valid from {_clock_text(valid_from)}, "
            f"expiry time of assertion {_clock_text(expiry)}. Review the documentation at "
            f"{CERT_DOCS} ."
        )  # fmt: skip

    @classmethod
    def outage(cls) -> EntraError:
        return cls(
            90033, "temporarily_unavailable", "A transient error has occurred. Please try again. "
            "(Sandbox outage, injected by a test.)", status=503,
        )  # fmt: skip


def _clock_text(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def error_response(request: web.Request, exc: EntraError, now: float) -> web.Response:
    """Entra's error body; the correlation id echoes the client's request id, as Entra's."""
    timestamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    correlation = (
        request.headers.get("client-request-id")
        or request.headers.get("x-ms-client-request-id")
        or str(uuid.uuid4())
    )
    body = {
        "error": exc.error,
        "error_description": f"AADSTS{exc.code}: {exc.message} Trace ID: {trace} "
        f"Correlation ID: {correlation} Timestamp: {timestamp}",
        "error_codes": [exc.code],
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"{request.scheme}://{request.host}/error?code={exc.code}",
    }
    return web.json_response(body, status=exc.status)
