"""The Blob stand-in's writes: Put Blob, Put Block, Put Block List and Delete Blob.

Each needs the Storage Blob Data Contributor role on the container (delete included); the
SDK's single-shot uploads (up to `max_single_put_size`, 64 MiB by default) use Put Blob and
larger or unsized ones stage blocks, then commit their list.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from aiohttp import web

from credsidecar.sandbox.azure.blob_auth import (
    STATE,
    check_conditions,
    existing_blob,
    open_container,
)
from credsidecar.sandbox.azure.blob_store import (
    DELETE,
    WRITE,
    BlobError,
    StoredBlob,
    block_ids,
    rfc1123,
)

__all__ = ["delete_blob", "put_blob", "put_block", "put_block_list"]

OCTET_STREAM = "application/octet-stream"


def _metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {k[10:]: v for k, v in headers.items() if k.lower().startswith("x-ms-meta-")}


def _stored(blob: StoredBlob) -> web.Response:
    headers = {
        "ETag": blob.etag,
        "Last-Modified": rfc1123(blob.modified),
        "Content-MD5": blob.md5_b64,
        "x-ms-request-server-encrypted": "true",
    }
    return web.Response(status=201, headers=headers)


async def put_blob(request: web.Request) -> web.Response:
    container, _ = open_container(request, WRITE)
    name = request.match_info["blob"]
    kind = request.headers.get("x-ms-blob-type")
    if kind != "BlockBlob":
        raise BlobError(
            400,
            "InvalidHeaderValue" if kind else "MissingRequiredHeader",
            "The value for one of the HTTP headers is not in the correct format. (The sandbox "
            f"stores block blobs only; x-ms-blob-type was {kind!r}.)",
        )
    check_conditions(request, container.blobs.get(name))
    data = await request.read()
    sent = request.headers.get("Content-MD5")
    computed = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    if sent and sent != computed:
        raise BlobError(
            400,
            "Md5Mismatch",
            "The MD5 value specified in the request did not match with the MD5 value "
            "calculated by the server.",
        )
    content_type = (
        request.headers.get("x-ms-blob-content-type")
        or request.headers.get("Content-Type")
        or OCTET_STREAM
    )
    now = request.app[STATE].azure.clock()
    blob = container.put(name, data, content_type, now, _metadata(request.headers))
    return _stored(blob)


async def put_block(request: web.Request) -> web.Response:
    container, _ = open_container(request, WRITE)
    block_id = request.query.get("blockid", "")
    if not block_id:
        raise BlobError(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified. (blockid)",
        )
    data = await request.read()
    container.staged.setdefault(request.match_info["blob"], {})[block_id] = data
    digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    headers = {"Content-MD5": digest, "x-ms-request-server-encrypted": "true"}
    return web.Response(status=201, headers=headers)


async def put_block_list(request: web.Request) -> web.Response:
    container, _ = open_container(request, WRITE)
    name = request.match_info["blob"]
    previous = container.blobs.get(name)
    check_conditions(request, previous)
    staged = container.staged.get(name, {})
    committed = previous.blocks if previous else {}
    blocks: dict[str, bytes] = {}
    chunks: list[bytes] = []  # a list may name one block more than once
    for kind, block_id in block_ids(await request.read()):
        sources = {"Committed": (committed,), "Uncommitted": (staged,)}.get(
            kind, (staged, committed)
        )
        found = next((s[block_id] for s in sources if block_id in s), None)
        if found is None:
            raise BlobError(400, "InvalidBlockList", "The specified block list is invalid.")
        blocks[block_id] = found
        chunks.append(found)
    content_type = request.headers.get("x-ms-blob-content-type") or OCTET_STREAM
    now = request.app[STATE].azure.clock()
    blob = container.put(
        name, b"".join(chunks), content_type, now, _metadata(request.headers), blocks
    )
    return _stored(blob)


async def delete_blob(request: web.Request) -> web.Response:
    container, _ = open_container(request, DELETE)
    blob = existing_blob(container, request.match_info["blob"])
    check_conditions(request, blob)
    del container.blobs[blob.name]
    return web.Response(status=202, headers={"x-ms-delete-type-permanent": "true"})
