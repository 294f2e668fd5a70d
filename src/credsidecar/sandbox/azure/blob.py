"""A local Azure Blob service: the subset azure-storage-blob uses, with Azure RBAC enforced.

Path-style URLs, as the Azurite emulator serves them and as the SDK builds them for an
`account_url` on 127.0.0.1 (`https://127.0.0.1:PORT/ACCOUNT`; the account is the first path
segment):
    GET  /{account}/{container}?restype=container&comp=list   List Blobs (prefix, delimiter,
                                                                marker, maxresults, include)
    GET|HEAD /{account}/{container}?restype=container         Get Container Properties
    GET  /{account}/{container}/{blob}                        Get Blob (x-ms-range / Range)
    HEAD /{account}/{container}/{blob}                        Get Blob Properties
    PUT  /{account}/{container}/{blob}                        Put Blob (block blobs)
    PUT  ...?comp=block&blockid=ID, ...?comp=blocklist        Put Block, Put Block List
    DELETE /{account}/{container}/{blob}                      Delete Blob
Conditional headers If-Match / If-None-Match apply (the SDK sends If-None-Match: * unless
`overwrite=True`, and If-Match with the first chunk's ETag on later chunks of a download).
Anything else is answered 501, which azure-core does not retry. Reads are here, writes in
blob_writes.py, authentication and authorization in blob_auth.py.

Errors are the service's: the status, `x-ms-error-code` and an XML `<Error>` body; 401s carry
the Bearer challenge (see blob_auth.py). Order of checks: authentication, the
container's existence (404 ContainerNotFound), the role on the container (403), then the
blob. (Azure would answer 403 before 404 for a container on which the caller has no role; the
sandbox says a mistyped container does not exist.)

Azurite, the real emulator (npm), accepts any token and enforces no permissions, so this
small Python subset stands in for it.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from credsidecar.sandbox.azure.blob_auth import (
    STATE,
    BlobState,
    challenge,
    check_conditions,
    existing_blob,
    open_container,
)
from credsidecar.sandbox.azure.blob_store import (
    READ,
    BlobError,
    StoredBlob,
    error_xml,
    list_blobs_xml,
    rfc1123,
)
from credsidecar.sandbox.azure.blob_writes import delete_blob, put_blob, put_block, put_block_list

__all__ = ["BlobState", "create_blob_app"]

API_VERSION = "2025-01-05"  # answered when a request names none
MAX_RESULTS = 5000
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _not_implemented(request: web.Request) -> BlobError:
    return BlobError(
        501,
        "NotImplemented",
        f"The sandbox Blob service does not implement {request.method} "
        f"{request.rel_url.raw_path_qs.split('?', 1)[-1] or 'on this path'}.",
    )


def _blob_headers(blob: StoredBlob) -> dict[str, str]:
    headers = {
        "Last-Modified": rfc1123(blob.modified),
        "ETag": blob.etag,
        "Content-Type": blob.content_type,
        "x-ms-creation-time": rfc1123(blob.created),
        "x-ms-blob-type": "BlockBlob",
        "x-ms-lease-status": "unlocked",
        "x-ms-lease-state": "available",
        "x-ms-server-encrypted": "true",
        "x-ms-access-tier": "Hot",
        "x-ms-access-tier-inferred": "true",
        "Accept-Ranges": "bytes",
    }
    headers.update({f"x-ms-meta-{k}": v for k, v in blob.metadata.items()})
    return headers


async def list_blobs(request: web.Request) -> web.Response:
    container, _ = open_container(request, READ)
    q = request.query
    prefix, marker = q.get("prefix", ""), q.get("marker", "")
    delimiter = q.get("delimiter") or "\0"  # no delimiter: a character names cannot hold
    raw = q.get("maxresults", str(MAX_RESULTS))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RESULTS:
        raise BlobError(
            400,
            "OutOfRangeQueryParameterValue",
            f"One of the query parameters specified in the request URI is outside the "
            f"permissible range. (maxresults must be 1..{MAX_RESULTS}.)",
        )
    blobs: list[StoredBlob] = []
    prefixes: list[str] = []
    next_marker = ""
    for name in sorted(n for n in container.blobs if n.startswith(prefix) and n >= marker):
        rest = name[len(prefix) :]
        group = prefix + rest.split(delimiter, 1)[0] + delimiter if delimiter in rest else ""
        if group and group in prefixes:
            continue  # names are sorted: a virtual directory's names come together
        if len(blobs) + len(prefixes) == int(raw):
            next_marker = name
            break
        if group:
            prefixes.append(group)
        else:
            blobs.append(container.blobs[name])
    endpoint = f"{request.scheme}://{request.host}/{request.match_info['account']}/"
    body = list_blobs_xml(endpoint, container.name, blobs, prefixes, q, next_marker)
    return web.Response(body=body, content_type="application/xml")


async def container_properties(request: web.Request) -> web.Response:
    container, _ = open_container(request, READ)
    headers = {
        "ETag": container.etag,
        "Last-Modified": rfc1123(container.created),
        "x-ms-lease-status": "unlocked",
        "x-ms-lease-state": "available",
        "x-ms-has-immutability-policy": "false",
        "x-ms-has-legal-hold": "false",
        "x-ms-default-encryption-scope": "$account-encryption-key",
        "x-ms-deny-encryption-scope-override": "false",
    }
    return web.Response(status=200, headers=headers)


def _range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(first, stop) of `x-ms-range` or `Range: bytes=a-[b]`, or None for the whole blob."""
    spec = request.headers.get("x-ms-range") or request.headers.get("Range")
    if not spec:
        return None
    first_text, _, last_text = spec.removeprefix("bytes=").partition("-")
    first = int(first_text) if first_text.isdigit() else 0
    stop = min(int(last_text) + 1, size) if last_text.isdigit() else size
    if first >= size or first >= stop:
        raise BlobError(
            416, "InvalidRange", "The range specified is invalid for the current size of the "
            "resource.",
        )  # fmt: skip
    return first, stop


async def get_blob(request: web.Request) -> web.Response:
    container, _ = open_container(request, READ)
    blob = existing_blob(container, request.match_info["blob"])
    check_conditions(request, blob)
    headers = _blob_headers(blob)
    span = _range(request, len(blob.data))
    if span is None:
        headers["Content-MD5"] = blob.md5_b64
        return web.Response(body=blob.data, headers=headers)
    first, stop = span
    part = blob.data[first:stop]
    headers["Content-Range"] = f"bytes {first}-{stop - 1}/{len(blob.data)}"
    headers["x-ms-blob-content-md5"] = blob.md5_b64
    if request.headers.get("x-ms-range-get-content-md5") == "true":
        digest = hashlib.md5(part, usedforsecurity=False).digest()
        headers["Content-MD5"] = base64.b64encode(digest).decode()
    return web.Response(status=206, body=part, headers=headers)


async def blob_properties(request: web.Request) -> web.Response:
    container, _ = open_container(request, READ)
    blob = existing_blob(container, request.match_info["blob"])
    check_conditions(request, blob)
    headers = {**_blob_headers(blob), "Content-MD5": blob.md5_b64}
    # aiohttp sends no body for HEAD but takes Content-Length from it, as Azure reports it.
    return web.Response(status=200, body=blob.data, headers=headers)


def _route(request: web.Request) -> tuple[str, _Handler]:
    """(operation name for the stats, handler) of a request."""
    q, method, on_blob = request.query, request.method, "blob" in request.match_info
    if not on_blob and q.get("restype") == "container":
        if q.get("comp") == "list" and method == "GET":
            return "list", list_blobs
        if "comp" not in q and method in ("GET", "HEAD"):
            return "container_properties", container_properties
    elif on_blob and method == "GET" and "comp" not in q:
        return "get", get_blob
    elif on_blob and method == "HEAD" and "comp" not in q:
        return "properties", blob_properties
    elif on_blob and method == "PUT":
        handler = {None: put_blob, "block": put_block, "blocklist": put_block_list}.get(
            q.get("comp")
        )
        if handler is not None:
            return q.get("comp") or "put", handler
    elif on_blob and method == "DELETE" and "comp" not in q:
        return "delete", delete_blob
    raise _not_implemented(request)


async def dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = str(uuid.uuid4())
    try:
        operation, handler = _route(request)
        state.azure.count(f"blob.{operation}")
        response = await handler(request)
    except BlobError as exc:
        headers = {"x-ms-error-code": exc.code}
        if exc.status == 401:
            headers["WWW-Authenticate"] = challenge(state.azure)
        body = error_xml(exc, request_id, state.azure.clock())
        response = web.Response(
            status=exc.status, body=body, headers=headers, content_type="application/xml"
        )
    response.headers["x-ms-request-id"] = request_id
    response.headers["x-ms-version"] = request.headers.get("x-ms-version", API_VERSION)
    if "x-ms-client-request-id" in request.headers:
        response.headers["x-ms-client-request-id"] = request.headers["x-ms-client-request-id"]
    return response


def create_blob_app(state: BlobState) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = state
    paths = (
        "/{account}",
        "/{account}/",
        "/{account}/{container}",
        "/{account}/{container}/{blob:.+}",
    )
    for path in paths:
        app.router.add_route("*", path, dispatch)
    return app
