"""In-memory buckets and objects for the storage stand-in, with IAM bindings per bucket.

Bindings name members as IAM does (`serviceAccount:EMAIL`, `principal://...`) and one of two
roles: roles/storage.objectAdmin or roles/storage.objectViewer, each with the bucket read
permission (storage.buckets.get) that projects grant their members through legacy roles.
Objects render as the JSON API's `storage#object` resources, hashes included: the client
checks `crc32c`/`md5Hash` of uploads and the `x-goog-hash` of downloads.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "OBJECT_ADMIN",
    "OBJECT_VIEWER",
    "Bucket",
    "StoredObject",
    "crc32c",
    "member_for",
    "object_resource",
]

OBJECT_ADMIN = "roles/storage.objectAdmin"
OBJECT_VIEWER = "roles/storage.objectViewer"
_READ = frozenset({"storage.buckets.get", "storage.objects.get", "storage.objects.list"})
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    OBJECT_VIEWER: _READ,
    OBJECT_ADMIN: _READ | {"storage.objects.create", "storage.objects.delete"},
}


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> str:
    """CRC32C as GCS reports it: base64 of the big-endian 32-bit value."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return base64.b64encode((crc ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def member_for(principal: str, kind: str) -> str:
    return principal if kind == "federated" else f"serviceAccount:{principal}"


def _timestamp(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class StoredObject:
    name: str
    data: bytes
    content_type: str
    generation: int  # microseconds since the epoch, as GCS does
    created: float
    metadata: dict[str, str] = field(default_factory=dict)
    crc32c: str = ""
    md5: str = ""

    def __post_init__(self) -> None:
        self.crc32c, self.md5 = crc32c(self.data), md5_b64(self.data)


@dataclass
class Bucket:
    name: str
    bindings: dict[str, str]  # member -> role
    created: float
    objects: dict[str, StoredObject] = field(default_factory=dict)

    def allows(self, member: str, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.bindings.get(member, ""), frozenset())

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        now: float,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        generation = max(
            int(now * 1_000_000), self.objects[name].generation + 1 if name in self.objects else 0
        )
        obj = StoredObject(name, data, content_type, generation, now, dict(metadata or {}))
        self.objects[name] = obj
        return obj

    def resource(self, base_url: str, project_number: str) -> dict[str, Any]:
        created = _timestamp(self.created)
        return {
            "kind": "storage#bucket",
            "selfLink": f"{base_url}/storage/v1/b/{self.name}",
            "id": self.name,
            "name": self.name,
            "projectNumber": project_number,
            "metageneration": "1",
            "location": "US",
            "locationType": "multi-region",
            "storageClass": "STANDARD",
            "etag": "CAE=",
            "timeCreated": created,
            "updated": created,
            "iamConfiguration": {
                "uniformBucketLevelAccess": {"enabled": True},
                "publicAccessPrevention": "enforced",
            },
        }


def object_resource(base_url: str, bucket: str, obj: StoredObject) -> dict[str, Any]:
    quoted = quote(obj.name, safe="")
    stamp = _timestamp(obj.created)
    resource: dict[str, Any] = {
        "kind": "storage#object",
        "id": f"{bucket}/{obj.name}/{obj.generation}",
        "selfLink": f"{base_url}/storage/v1/b/{bucket}/o/{quoted}",
        "mediaLink": f"{base_url}/download/storage/v1/b/{bucket}/o/{quoted}"
        f"?generation={obj.generation}&alt=media",
        "name": obj.name,
        "bucket": bucket,
        "generation": str(obj.generation),
        "metageneration": "1",
        "contentType": obj.content_type,
        "storageClass": "STANDARD",
        "size": str(len(obj.data)),
        "md5Hash": obj.md5,
        "crc32c": obj.crc32c,
        "etag": base64.b64encode(obj.generation.to_bytes(8, "big")).decode(),
        "timeCreated": stamp,
        "updated": stamp,
        "timeStorageClassUpdated": stamp,
    }
    if obj.metadata:
        resource["metadata"] = dict(obj.metadata)
    return resource
