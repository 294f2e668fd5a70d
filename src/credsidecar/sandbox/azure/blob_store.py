"""In-memory blob containers with Azure RBAC role assignments, and the Blob service's XML.

Role assignments are per container, by the principal's object id (`oid` of its token), with
the two built-in data roles a pipeline needs: Storage Blob Data Reader (read and list) and
Storage Blob Data Contributor (also write and delete). Blobs are block blobs; staged blocks
(Put Block) wait per blob until a Put Block List commits them.

XML is written by hand with escaping (the service's documents are small and fixed), and the
only XML the service reads, a block list, is matched with a regular expression rather than
parsed, so no XML parser ever sees client input.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CONTRIBUTOR",
    "READ",
    "READER",
    "WRITE",
    "BlobError",
    "Container",
    "StoredBlob",
    "block_ids",
    "error_xml",
    "list_blobs_xml",
    "rfc1123",
]

READER = "Storage Blob Data Reader"
CONTRIBUTOR = "Storage Blob Data Contributor"
_ACTIONS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/"
READ, WRITE, DELETE = _ACTIONS + "read", _ACTIONS + "write", _ACTIONS + "delete"
ROLE_ACTIONS: Mapping[str, frozenset[str]] = {
    READER: frozenset({READ}),
    CONTRIBUTOR: frozenset({READ, WRITE, DELETE}),
}
_FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01, in 100 ns ticks
_BLOCK = re.compile(r"<(Committed|Uncommitted|Latest)>([^<]*)</\1>")


class BlobError(Exception):
    """An error answer of the Blob service: status, x-ms-error-code and message."""

    def __init__(self, status: int, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


def rfc1123(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@dataclass
class StoredBlob:
    name: str
    data: bytes
    content_type: str
    created: float
    modified: float
    metadata: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, bytes] = field(default_factory=dict)  # committed blocks, by id
    md5: bytes = b""

    def __post_init__(self) -> None:
        self.md5 = hashlib.md5(self.data, usedforsecurity=False).digest()

    @property
    def etag(self) -> str:
        """Azure's form: the quoted FILETIME of the last change, in hex."""
        return f'"0x{int(self.modified * 10_000_000) + _FILETIME_EPOCH:X}"'

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(self.md5).decode()


@dataclass
class Container:
    name: str
    roles: dict[str, str]  # principal object id -> role name
    created: float
    blobs: dict[str, StoredBlob] = field(default_factory=dict)
    staged: dict[str, dict[str, bytes]] = field(default_factory=dict)  # blob -> block id -> data

    def allows(self, object_id: str, action: str) -> bool:
        return action in ROLE_ACTIONS.get(self.roles.get(object_id, ""), frozenset())

    @property
    def etag(self) -> str:
        return f'"0x{int(self.created * 10_000_000) + _FILETIME_EPOCH:X}"'

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        now: float,
        metadata: Mapping[str, str] | None = None,
        blocks: Mapping[str, bytes] | None = None,
    ) -> StoredBlob:
        previous = self.blobs.get(name)
        # Each write gets a new ETag, even within one clock tick (1 us: floats near 2e9
        # cannot hold a 100 ns step).
        modified = max(now, previous.modified + 1e-6) if previous else now
        created = previous.created if previous else now
        blob = StoredBlob(
            name, data, content_type, created, modified, dict(metadata or {}), dict(blocks or {})
        )
        self.blobs[name] = blob
        self.staged.pop(name, None)
        return blob


def block_ids(body: bytes) -> list[tuple[str, str]]:
    """(kind, id) of each block a Put Block List body names, in order."""
    return _BLOCK.findall(body.decode("utf-8", errors="replace"))


def _text(tag: str, value: object) -> str:
    return f"<{tag}>{html.escape(str(value))}</{tag}>" if value != "" else f"<{tag} />"


def _blob_xml(blob: StoredBlob, include_metadata: bool) -> str:
    properties = "".join(
        _text(tag, value)
        for tag, value in (
            ("Creation-Time", rfc1123(blob.created)),
            ("Last-Modified", rfc1123(blob.modified)),
            ("Etag", blob.etag.strip('"')),
            ("Content-Length", len(blob.data)),
            ("Content-Type", blob.content_type),
            ("Content-Encoding", ""),
            ("Content-Language", ""),
            ("Content-CRC64", ""),
            ("Content-MD5", blob.md5_b64),
            ("Cache-Control", ""),
            ("Content-Disposition", ""),
            ("BlobType", "BlockBlob"),
            ("AccessTier", "Hot"),
            ("AccessTierInferred", "true"),
            ("LeaseStatus", "unlocked"),
            ("LeaseState", "available"),
            ("ServerEncrypted", "true"),
        )
    )
    metadata = ""
    if include_metadata:
        metadata = "<Metadata>" + "".join(_text(k, v) for k, v in blob.metadata.items())
        metadata += "</Metadata>"
    return (
        f"<Blob>{_text('Name', blob.name)}<Properties>{properties}</Properties>{metadata}"
        "<OrMetadata /></Blob>"
    )


def list_blobs_xml(
    service_endpoint: str,
    container: str,
    blobs: Iterable[StoredBlob],
    prefixes: Iterable[str],
    query: Mapping[str, str],
    next_marker: str,
) -> bytes:
    """An `EnumerationResults` document, echoing the query's prefix, marker and delimiter."""
    include_metadata = "metadata" in query.get("include", "").split(",")
    head = "".join(
        _text(tag, query[key])
        for tag, key in (
            ("Prefix", "prefix"),
            ("Marker", "marker"),
            ("MaxResults", "maxresults"),
            ("Delimiter", "delimiter"),
        )
        if key in query
    )
    items = "".join(_blob_xml(blob, include_metadata) for blob in blobs)
    items += "".join(f"<BlobPrefix>{_text('Name', p)}</BlobPrefix>" for p in prefixes)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="{html.escape(service_endpoint)}" '
        f'ContainerName="{html.escape(container)}">{head}<Blobs>{items}</Blobs>'
        f"{_text('NextMarker', next_marker)}</EnumerationResults>"
    ).encode()


def error_xml(error: BlobError, request_id: str, now: float) -> bytes:
    """The service's error document: the message ends with the request id and time."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"
    message = f"{error.message}\nRequestId:{request_id}\nTime:{stamp}"
    detail = _text("AuthenticationErrorDetail", error.detail) if error.detail else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error>{_text('Code', error.code)}{_text('Message', message)}{detail}</Error>"
    ).encode()
