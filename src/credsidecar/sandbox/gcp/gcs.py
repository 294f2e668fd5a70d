"""A local Cloud Storage JSON API: the subset google-cloud-storage uses, with IAM enforced.

Routes are the client's own URL templates under one base URL (`Connection.API_URL_TEMPLATE`
and blob.py's `_DOWNLOAD_URL_TEMPLATE`/`_BASE_UPLOAD_TEMPLATE`):
    GET    /storage/v1/b/{bucket}                    buckets.get
    GET    /storage/v1/b/{bucket}/iam/testPermissions buckets.testIamPermissions (preflight's
                                                     one GCS call): which of the `permissions`
                                                     asked the caller holds on the bucket
    GET    /storage/v1/b/{bucket}/o                  objects.list (prefix, delimiter, pages)
    GET    /storage/v1/b/{bucket}/o/{object}         objects.get (`alt=media`: the bytes)
    DELETE /storage/v1/b/{bucket}/o/{object}         objects.delete
    GET    /download/storage/v1/b/{bucket}/o/{object}?alt=media   what `mediaLink` points to
    POST   /upload/storage/v1/b/{bucket}/o?uploadType=media|multipart|resumable
    PUT    /upload/storage/v1/b/{bucket}/o?upload_id=...          resumable chunks
Requests carry `Authorization: Bearer` with a token from the sandbox IAM Credentials (a service
account) or STS (a federated principal); expired or unknown tokens get 401, missing ones 401
"Anonymous caller ...", and a member without the permission 403 in GCS's words.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from credsidecar.sandbox.gcp.gcs_store import (
    Bucket,
    StoredObject,
    crc32c,
    md5_b64,
    member_for,
    object_resource,
)
from credsidecar.sandbox.gcp.gcs_upload import parse_upload
from credsidecar.sandbox.gcp.state import CLOUD_PLATFORM, AccessGrant, GcpState, bearer_token

__all__ = ["GcsState", "create_gcs_app"]

_DEVSTORAGE = "https://www.googleapis.com/auth/devstorage."
WRITE_SCOPES = frozenset({CLOUD_PLATFORM, _DEVSTORAGE + "read_write", _DEVSTORAGE + "full_control"})
READ_SCOPES = WRITE_SCOPES | {_DEVSTORAGE + "read_only", CLOUD_PLATFORM + ".read-only"}
MAX_RESULTS = 1000


@dataclass
class Resumable:
    bucket: str
    name: str
    content_type: str
    metadata: dict[str, Any]
    if_generation_match: str | None  # 0: only if absent; checked when the object is stored
    data: bytearray = field(default_factory=bytearray)


@dataclass
class GcsState:
    shared: GcpState
    buckets: dict[str, Bucket]
    project_number: str
    uploads: dict[str, Resumable] = field(default_factory=dict)


STATE = web.AppKey("gcs_state", GcsState)


class GcsError(Exception):
    def __init__(self, code: int, message: str, reason: str, **extra: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.extra = code, message, reason, extra


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _grant(request: web.Request) -> AccessGrant | None:
    token = bearer_token(request)
    if token is None:
        return None
    grant = request.app[STATE].shared.tokens.lookup(token)
    if grant is None:
        raise GcsError(
            401, "Invalid Credentials", "authError", locationType="header", location="Authorization"
        )
    return grant


def _scope_allows(grant: AccessGrant, permission: str) -> bool:
    writes = permission in ("storage.objects.create", "storage.objects.delete")
    return bool(grant.scopes & (WRITE_SCOPES if writes else READ_SCOPES))


def _authorize(request: web.Request, bucket_name: str, permission: str) -> Bucket:
    bucket = request.app[STATE].buckets.get(bucket_name)
    if bucket is None:
        raise GcsError(404, "The specified bucket does not exist.", "notFound")
    target = "bucket" if permission in ("storage.buckets.get", "storage.objects.list") else "object"
    denied = (
        f"does not have {permission} access to the Google Cloud Storage {target}. "
        f"Permission '{permission}' denied on resource (or it may not exist)."
    )
    grant = _grant(request)
    if grant is None:
        raise GcsError(401, f"Anonymous caller {denied}", "required")
    if not _scope_allows(grant, permission):
        raise GcsError(403, "Provided scope(s) are not authorized", "forbidden")
    if not bucket.allows(member_for(grant.principal, grant.kind), permission):
        raise GcsError(403, f"{grant.principal} {denied}", "forbidden")
    return bucket


def _object(bucket: Bucket, name: str, generation: str | None = None) -> StoredObject:
    obj = bucket.objects.get(name)
    if obj is None or (generation and generation != str(obj.generation)):
        raise GcsError(404, f"No such object: {bucket.name}/{name}", "notFound")
    return obj


async def get_bucket(request: web.Request) -> web.Response:
    bucket = _authorize(request, request.match_info["bucket"], "storage.buckets.get")
    state = request.app[STATE]
    return web.json_response(bucket.resource(_base(request), state.project_number))


async def test_permissions(request: web.Request) -> web.Response:
    """buckets.testIamPermissions: the asked permissions the caller holds, by the same bucket
    bindings and token scopes `_authorize` enforces. GCS requires no permission for the call
    itself: a caller with no role gets 200 and, as GCS answers it, no `permissions` field. A
    missing bucket is 404 and a missing or unknown token 401, as for every other call."""
    asked = request.query.getall("permissions", [])
    if not asked:
        raise GcsError(400, "Required parameter: permissions", "required")
    for permission in asked:
        if permission in ("storage.buckets.list", "storage.buckets.create"):
            raise GcsError(
                400, f"Permission '{permission}' applies to projects, not buckets.", "invalid"
            )
    bucket = request.app[STATE].buckets.get(request.match_info["bucket"])
    if bucket is None:
        raise GcsError(404, "The specified bucket does not exist.", "notFound")
    grant = _grant(request)
    if grant is None:
        raise GcsError(401, "Anonymous caller does not have access to test permissions on the "
                       "Google Cloud Storage bucket.", "required")  # fmt: skip
    member = member_for(grant.principal, grant.kind)
    held = [p for p in dict.fromkeys(asked) if _scope_allows(grant, p) and bucket.allows(member, p)]
    body: dict[str, Any] = {"kind": "storage#testIamPermissionsResponse"}
    if held:
        body["permissions"] = held
    return web.json_response(body)


async def list_objects(request: web.Request) -> web.Response:
    bucket = _authorize(request, request.match_info["bucket"], "storage.objects.list")
    q = request.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    start = max(q.get("startOffset", ""), q.get("pageToken", ""))
    end = q.get("endOffset")
    raw_limit = q.get("maxResults", "")
    if raw_limit and not raw_limit.isdigit():
        raise GcsError(400, f"Invalid value for maxResults: {raw_limit!r}.", "invalid")
    limit = min(int(raw_limit or MAX_RESULTS), MAX_RESULTS) or MAX_RESULTS
    items: list[dict[str, Any]] = []
    prefixes: set[str] = set()
    next_token = None
    for name in sorted(bucket.objects):
        if not name.startswith(prefix) or name < start or (end and name >= end):
            continue
        if q.get("pageToken") and name == q["pageToken"]:
            continue  # the page token is the last name of the previous page
        if len(items) >= limit:
            next_token = items[-1]["name"]
            break
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            continue
        items.append(object_resource(_base(request), bucket.name, bucket.objects[name]))
    body: dict[str, Any] = {"kind": "storage#objects"}
    if items:
        body["items"] = items
    if prefixes:
        body["prefixes"] = sorted(prefixes)
    if next_token:
        body["nextPageToken"] = next_token
    return web.json_response(body)


def _media(request: web.Request, obj: StoredObject) -> web.Response:
    headers = {
        "x-goog-hash": f"crc32c={obj.crc32c},md5={obj.md5}",
        "x-goog-generation": str(obj.generation),
        "x-goog-metageneration": "1",
        "x-goog-stored-content-length": str(len(obj.data)),
        "x-goog-stored-content-encoding": "identity",
        "ETag": f'"{obj.md5}"',
    }
    data, status = obj.data, 200
    if request.headers.get("Range") and data:  # bytes=a-b: the client's chunked downloads
        try:
            first, stop, _ = request.http_range.indices(len(data))
        except ValueError:
            first, stop = len(data), len(data)
        if first >= min(stop, len(data)):
            raise GcsError(
                416, "The requested range cannot be satisfied.", "requestedRangeNotSatisfiable"
            )
        data, status = data[first:stop], 206
        headers["Content-Range"] = f"bytes {first}-{stop - 1}/{len(obj.data)}"
    return web.Response(body=data, status=status, headers=headers, content_type=obj.content_type)


async def get_object(request: web.Request) -> web.Response:
    bucket = _authorize(request, request.match_info["bucket"], "storage.objects.get")
    obj = _object(bucket, request.match_info["object"], request.query.get("generation"))
    if request.query.get("alt") == "media" or request.path.startswith("/download/"):
        return _media(request, obj)
    return web.json_response(object_resource(_base(request), bucket.name, obj))


async def delete_object(request: web.Request) -> web.Response:
    bucket = _authorize(request, request.match_info["bucket"], "storage.objects.delete")
    obj = _object(bucket, request.match_info["object"], request.query.get("generation"))
    del bucket.objects[obj.name]
    return web.Response(status=204)


def _store(request: web.Request, upload: Resumable, data: bytes) -> web.Response:
    bucket = request.app[STATE].buckets[upload.bucket]
    for key, computed in (("crc32c", crc32c(data)), ("md5Hash", md5_b64(data))):
        sent = upload.metadata.get(key)
        if sent and sent != computed:
            raise GcsError(
                400,
                f'Provided {key} "{sent}" doesn\'t match calculated {key} "{computed}".',
                "invalid",
            )
    current = bucket.objects.get(upload.name)
    match = upload.if_generation_match
    if match is not None and match != str(current.generation if current else 0):
        raise GcsError(
            412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet"
        )
    metadata = upload.metadata.get("metadata")
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    content_type = str(upload.metadata.get("contentType") or upload.content_type)
    now = request.app[STATE].shared.clock()
    obj = bucket.put(upload.name, data, content_type, now, metadata)
    return web.json_response(object_resource(_base(request), bucket.name, obj))


async def upload(request: web.Request) -> web.Response:
    kind = request.query.get("uploadType", "media")
    try:
        metadata, media_type, body = parse_upload(kind, request.headers, await request.read())
    except ValueError as exc:
        raise GcsError(400, str(exc), "invalid") from exc
    bucket = _authorize(request, request.match_info["bucket"], "storage.objects.create")
    name = str(metadata.get("name") or request.query.get("name") or "")
    if not name:
        raise GcsError(400, "Upload requests must include an object name.", "required")
    if name in bucket.objects:  # overwriting also needs delete, as in GCS
        _authorize(request, bucket.name, "storage.objects.delete")
    match = request.query.get("ifGenerationMatch")
    pending = Resumable(bucket.name, name, media_type, metadata, match)
    if kind != "resumable":
        return _store(request, pending, body)
    upload_id = secrets.token_urlsafe(24)
    request.app[STATE].uploads[upload_id] = pending
    location = (
        f"{_base(request)}/upload/storage/v1/b/{bucket.name}/o?uploadType=resumable"
        f"&upload_id={upload_id}"
    )
    return web.Response(status=200, headers={"Location": location})


async def resumable_chunk(request: web.Request) -> web.Response:
    """A chunk (`Content-Range: bytes a-b/total|*`) or a status query (`bytes */total|*`).

    Like GCS, the session URL is the credential: chunks are not re-authorized."""
    uploads = request.app[STATE].uploads
    pending = uploads.get(request.query.get("upload_id", ""))
    if pending is None:
        raise GcsError(404, "No such upload session.", "notFound")
    data = await request.read()
    spec = request.headers.get("Content-Range", "bytes */*").removeprefix("bytes ")
    span, _, total = spec.partition("/")
    if span != "*":
        first = int(span.split("-")[0])
        if first > len(pending.data):
            raise GcsError(
                400,
                f"Chunk starts at {first}, after the {len(pending.data)} bytes received so far.",
                "invalid",
            )
        pending.data[first:] = data
    if total != "*" and int(total) == len(pending.data):
        del uploads[request.query["upload_id"]]
        return _store(request, pending, bytes(pending.data))
    headers = {"Range": f"bytes=0-{len(pending.data) - 1}"} if pending.data else {}
    return web.Response(status=308, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except GcsError as exc:
        detail = {"message": exc.message, "domain": "global", "reason": exc.reason, **exc.extra}
        error = {"code": exc.code, "message": exc.message, "errors": [detail]}
        return web.json_response({"error": error}, status=exc.code)


def create_gcs_app(state: GcsState) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
    app[STATE] = state
    app.router.add_get("/storage/v1/b/{bucket}", get_bucket)
    app.router.add_get("/storage/v1/b/{bucket}/iam/testPermissions", test_permissions)
    app.router.add_get("/storage/v1/b/{bucket}/o", list_objects)
    app.router.add_get("/storage/v1/b/{bucket}/o/{object:.+}", get_object)
    app.router.add_delete("/storage/v1/b/{bucket}/o/{object:.+}", delete_object)
    app.router.add_get("/download/storage/v1/b/{bucket}/o/{object:.+}", get_object)
    app.router.add_post("/upload/storage/v1/b/{bucket}/o", upload)
    app.router.add_put("/upload/storage/v1/b/{bucket}/o", resumable_chunk)
    return app
