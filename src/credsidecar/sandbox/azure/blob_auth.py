"""Who is calling the Blob stand-in, and may they: Azure Storage's OAuth checks.

Authentication (401, with the `WWW-Authenticate: Bearer authorization_uri=... resource_id=...`
challenge that azure-core's storage policy reads to ask for a token for the right tenant and
resource): the bearer token must be a JWT signed by the sandbox Entra key, issued by
https://sts.windows.net/{tenant}/, for the audience https://storage.azure.com (with or without
a trailing slash), and within its lifetime. No header at all is NoAuthenticationInformation;
a bad token is InvalidAuthenticationInfo with Storage's AuthenticationErrorDetail. Shared Key
and SAS are refused: the sandbox account has no keys.

Authorization (403 AuthorizationPermissionMismatch): the token's `oid` needs a role on the
container that includes the action.

`open_container` runs both for a request, after checking the account and that the container
exists; `check_conditions` applies If-Match / If-None-Match.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from credsidecar.sandbox.azure.blob_store import BlobError, Container, StoredBlob
from credsidecar.sandbox.azure.state import (
    STORAGE_RESOURCE,
    AzureState,
    TokenRejected,
    verify_access_token,
)

__all__ = [
    "STATE",
    "BlobState",
    "Principal",
    "authenticate",
    "authorize",
    "challenge",
    "check_conditions",
    "existing_blob",
    "open_container",
]

STORAGE_AUDIENCES = frozenset({STORAGE_RESOURCE, STORAGE_RESOURCE + "/"})
_FAILED = (
    "Server failed to authenticate the request. Please refer to the information in the "
    "www-authenticate header."
)


@dataclass(frozen=True)
class Principal:
    object_id: str
    client_id: str


def challenge(state: AzureState) -> str:
    authorization_uri = f"{state.authority_url}/{state.tenant_id}/oauth2/authorize"
    return f"Bearer authorization_uri={authorization_uri} resource_id={STORAGE_RESOURCE}"


def _invalid(detail: str) -> BlobError:
    return BlobError(401, "InvalidAuthenticationInfo", _FAILED, detail)


def authenticate(state: AzureState, authorization: str | None) -> Principal:
    if not authorization:
        raise BlobError(401, "NoAuthenticationInformation", _FAILED)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise BlobError(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of Authorization "
            "header is formed correctly including the signature. (The sandbox account has no "
            "keys: use an Entra token.)",
        )
    try:
        claims = verify_access_token(state, token.strip(), STORAGE_AUDIENCES)
    except TokenRejected as exc:
        raise _invalid(str(exc)) from exc
    return Principal(str(claims.get("oid", "")), str(claims.get("appid", "")))


def authorize(container: Container, principal: Principal, action: str) -> None:
    if not container.allows(principal.object_id, action):
        raise BlobError(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        )


@dataclass
class BlobState:
    azure: AzureState
    account: str
    containers: dict[str, Container]


STATE = web.AppKey("azure_blob_state", BlobState)


def open_container(request: web.Request, action: str) -> tuple[Container, Principal]:
    state = request.app[STATE]
    if request.match_info["account"] != state.account:
        raise BlobError(404, "ResourceNotFound", "The specified resource does not exist.")
    principal = authenticate(state.azure, request.headers.get("Authorization"))
    container = state.containers.get(request.match_info["container"])
    if container is None:
        raise BlobError(404, "ContainerNotFound", "The specified container does not exist.")
    authorize(container, principal, action)
    return container, principal


def existing_blob(container: Container, name: str) -> StoredBlob:
    blob = container.blobs.get(name)
    if blob is None:
        raise BlobError(404, "BlobNotFound", "The specified blob does not exist.")
    return blob


def check_conditions(request: web.Request, blob: StoredBlob | None) -> None:
    if_match = request.headers.get("If-Match")
    if if_match and (blob is None or if_match not in ("*", blob.etag)):
        raise BlobError(
            412,
            "ConditionNotMet",
            "The condition specified using HTTP conditional header(s) is not met.",
        )
    if request.headers.get("If-None-Match") == "*" and blob is not None:
        raise BlobError(409, "BlobAlreadyExists", "The specified blob already exists.")
