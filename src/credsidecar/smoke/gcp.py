"""GCP checks: the GCE metadata server as google-auth, the Node client and gcloud read it, and the
external-account file of `--secret-only` (DESIGN.md, "Endpoint contracts", GCP)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from credsidecar.smoke.claims import peek_claims
from credsidecar.smoke.client import Client, Reply
from credsidecar.smoke.model import Found, Skip, Violation

__all__ = [
    "CREDENTIALS_VARIABLE", "ENVIRONMENT_OVERRIDES", "HOST_VARIABLE", "IP_VARIABLE",
    "METADATA_OVERRIDES", "account", "external_account", "flavor_required", "id_token", "ping",
    "project", "token", "uses_external_account",
]  # fmt: skip

HOST_VARIABLE = "GCE_METADATA_HOST"
IP_VARIABLE = "GCE_METADATA_IP"
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
# Variables that win over the sidecar in google-auth and gcloud.
ENVIRONMENT_OVERRIDES = ("GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
                         "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE")  # fmt: skip
# ... and one that turns the metadata server off (--secret-only sets it on purpose).
METADATA_OVERRIDES = (*ENVIRONMENT_OVERRIDES, "NO_GCE_CHECK")
FLAVOR = {"Metadata-Flavor": "Google"}
SA = "/computeMetadata/v1/instance/service-accounts/default"
# google-auth refreshes 3m45s before expiry and Node 5 minutes: the sidecar serves at least 10
# minutes (DESIGN.md).
MIN_REMAINING = 10 * 60
# Federated identities without a service account are named so (providers.py): no ID tokens.
FEDERATED_SUFFIX = "@federated.invalid"


def _data_base(env: Mapping[str, str]) -> str:
    # google-auth reads data from GCE_METADATA_HOST; Node reads GCE_METADATA_IP first.
    host = env.get(HOST_VARIABLE) or env[IP_VARIABLE]
    return _base(host, HOST_VARIABLE if env.get(HOST_VARIABLE) else IP_VARIABLE)


def _base(host: str, variable: str) -> str:
    if "://" in host or "/" in host:
        raise Violation(f"{variable} {host!r} must be HOST:PORT (SDKs prepend http://)")
    return f"http://{host}"


def _flavored(reply: Reply) -> Reply:
    if reply.header("Metadata-Flavor") != "Google":
        raise Violation(
            f"{reply.what} answered without the response header Metadata-Flavor: Google; "
            "google-auth's ping and the Node client refuse such an answer"
        )
    return reply


def _get(client: Client, url: str) -> Reply:
    return _flavored(client.request("GET", url, FLAVOR))


def ping(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    """google-auth pings GCE_METADATA_IP and reads data from GCE_METADATA_HOST; Node reads the
    IP first: with either unset, some client asks the real metadata addresses instead."""
    for variable in (IP_VARIABLE, HOST_VARIABLE):
        if not env.get(variable):
            raise Violation(
                f"{variable} is unset while "
                f"{HOST_VARIABLE if variable == IP_VARIABLE else IP_VARIABLE} is set: "
                "google-auth and Node would ask the real metadata server for part of their "
                "work; set both to the sidecar's HOST:PORT"
            )
    _get(client, f"{_base(env[IP_VARIABLE], IP_VARIABLE)}/").expect(200)
    return Found(note="answered with Metadata-Flavor: Google")


def flavor_required(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    reply = client.request("GET", f"{_data_base(env)}{SA}/token")
    _flavored(reply).expect(
        403,
        " to a request without Metadata-Flavor: Google (the header is what keeps a browser page "
        "or a forwarded request from reading tokens)",
    )
    return Found(note="refused without Metadata-Flavor")


def _email(base: str, client: Client) -> str:
    email = _get(client, f"{base}{SA}/email").expect(200).text()
    if not email or email != email.strip() or "@" not in email:
        raise Violation(f"GET {base}{SA}/email answered {email[:80]!r}, not one email address")
    return email


def token(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    base = _data_base(env)
    reply = _get(client, f"{base}{SA}/token").expect(200)
    body = reply.json_object()
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise Violation(f"{reply.what} has no access_token")
    expires_in = body.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        raise Violation(f"{reply.what}: expires_in {expires_in!r} is not an integer (google-auth "
                        "adds it to the clock)")  # fmt: skip
    if expires_in <= 0:
        raise Violation(f"{reply.what}: expires_in is {expires_in}: an expired token")
    if expires_in < MIN_REMAINING:
        raise Violation(
            f"{reply.what}: expires_in {expires_in} s is under {MIN_REMAINING // 60} minutes "
            "(google-auth and Node refresh 4-5 minutes before expiry)"
        )
    if body.get("token_type") != "Bearer":
        raise Violation(f"{reply.what}: token_type is {body.get('token_type')!r}, not 'Bearer'")
    return Found(_email(base, client), float(expires_in))


def account(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    base = _data_base(env)
    email = _email(base, client)
    reply = _get(client, f"{base}{SA}/?recursive=true").expect(200)
    info = reply.json_object()
    if info.get("email") != email:
        raise Violation(f"{reply.what}: email {info.get('email')!r} is not {email!r} (from /email)")
    if not isinstance(info.get("scopes"), list):
        raise Violation(f"{reply.what} has no scopes list")
    return Found(identity=email)


def project(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    base = _data_base(env)
    reply = _get(client, f"{base}/computeMetadata/v1/project/project-id")
    if reply.status == 404:
        if env.get("GOOGLE_CLOUD_PROJECT"):
            return Found(note=f"from GOOGLE_CLOUD_PROJECT={env['GOOGLE_CLOUD_PROJECT']}")
        raise Violation(
            f"{reply.what} answered 404 and GOOGLE_CLOUD_PROJECT is unset: clients that need a "
            "project will fail; give the identity a project_id (or serve --gcp-project-id)"
        )
    project_id = reply.expect(200).text()
    if not project_id or project_id != project_id.strip():
        raise Violation(f"{reply.what} answered {project_id[:80]!r}, not one project id")
    return Found(identity=f"project {project_id}")


def id_token(env: Mapping[str, str], client: Client, now: Callable[[], float],
             audience: str) -> Found:  # fmt: skip
    base = _data_base(env)
    email = _email(base, client)
    if email.endswith(FEDERATED_SUFFIX):
        raise Skip("direct federation: ID tokens need a service account in the identity")
    from urllib.parse import quote

    reply = _get(client, f"{base}{SA}/identity?audience={quote(audience, safe='')}&format=full")
    claims = peek_claims(reply.expect(200).text(), f"the ID token from {reply.what}")
    if claims.get("aud") != audience:
        raise Violation(f"the ID token's aud is {claims.get('aud')!r}, not {audience!r} as asked")
    return Found(f"{claims.get('email', email)} for aud {audience}",
                 _remaining_from_exp(claims, "the ID token", now()))  # fmt: skip


def _remaining_from_exp(claims: Mapping[str, object], what: str, now: float) -> float:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Violation(f"{what} has no numeric exp claim")
    if exp <= now:
        raise Violation(f"{what} has expired (exp {int(exp)})")
    return float(exp) - now


def _external_document(env: Mapping[str, str]) -> dict[str, object] | None:
    """The external-account file GOOGLE_APPLICATION_CREDENTIALS names, or None for other files."""
    path = env[CREDENTIALS_VARIABLE]
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise Violation(f"{CREDENTIALS_VARIABLE} {path} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise Violation(f"{CREDENTIALS_VARIABLE} {path} is not JSON") from None
    if not isinstance(document, dict) or document.get("type") != "external_account":
        return None
    return document


def uses_external_account(env: Mapping[str, str]) -> bool:
    try:
        return _external_document(env) is not None
    except Violation:
        return True  # let the check say what is wrong with it


def external_account(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
    """google-auth's identity_pool reads credential_source.url with its headers and takes the
    subject token from the JSON field the format names."""
    path = env[CREDENTIALS_VARIABLE]
    document = _external_document(env)
    if document is None:
        raise Violation(
            f"{CREDENTIALS_VARIABLE} {path} holds other credentials than credsidecar's "
            "external account: they win over the sidecar in every Google client; unset it"
        )
    source = document.get("credential_source")
    if not isinstance(source, dict) or not isinstance(source.get("url"), str):
        raise Violation(f"{path}: credential_source has no url (credsidecar serves one)")
    headers = source.get("headers") or {}
    fmt = source.get("format") or {}
    if not isinstance(headers, dict) or not isinstance(fmt, dict):
        raise Violation(f"{path}: credential_source headers and format must be objects")
    if fmt.get("type") != "json" or not isinstance(fmt.get("subject_token_field_name"), str):
        raise Violation(f"{path}: credential_source.format must be json with a field name")
    reply = client.request("GET", source["url"], {str(k): str(v) for k, v in headers.items()})
    body = reply.expect(200).json_object()
    subject = body.get(fmt["subject_token_field_name"])
    if not isinstance(subject, str) or not subject:
        raise Violation(f"{reply.what} has no {fmt['subject_token_field_name']!r} field")
    claims = peek_claims(subject, f"the subject token from {reply.what}")
    audience = document.get("audience")
    target = document.get("service_account_impersonation_url")
    who = str(target).rsplit("/", 1)[-1].removesuffix(":generateAccessToken") if target else None
    identity = who or f"provider {audience}"
    return Found(f"{identity} (subject {claims.get('sub', '?')})",
                 _remaining_from_exp(claims, "the subject token", now()))  # fmt: skip
