"""Upload request bodies of the storage JSON API, parsed: what `uploadType` carries where.

- `media`: the body is the object; its name is the `name` query parameter.
- `multipart`: `multipart/related` with a JSON metadata part (name, contentType, metadata,
  crc32c/md5Hash that the client computed) and the media part; google-resumable-media builds
  it by hand (`construct_multipart_request`), so the boundary is parsed here the same way.
- `resumable`: the body of the first request is the JSON metadata; chunks follow by PUT.
Every function raises `ValueError` with a message fit for a 400 answer.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["parse_upload"]

OCTET_STREAM = "application/octet-stream"


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError("The object metadata is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise ValueError("The object metadata must be a JSON object.")
    return value


def _header_param(content_type: str, name: str) -> str | None:
    header = email.message.Message()
    header["content-type"] = content_type
    value = header.get_param(name)
    return value if isinstance(value, str) else None


def multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], str, bytes]:
    boundary = _header_param(content_type, "boundary")
    parts = body.split(b"--" + boundary.encode())[1:-1] if boundary else []
    if len(parts) != 2:
        raise ValueError("A multipart upload needs exactly a metadata part and a media part.")
    sections = []
    for part in parts:
        head, _, content = part.removeprefix(b"\r\n").removesuffix(b"\r\n").partition(b"\r\n\r\n")
        sections.append((head.decode("latin-1"), content))
    media_type = OCTET_STREAM
    for line in sections[1][0].split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-type":
            media_type = value.strip()
    return json_object(sections[0][1]), media_type, sections[1][1]


def parse_upload(
    kind: str, headers: Mapping[str, str], body: bytes
) -> tuple[dict[str, Any], str, bytes]:
    """(metadata, content type, object bytes) of an upload request."""
    if kind == "multipart":
        return multipart(headers.get("Content-Type", ""), body)
    if kind == "resumable":
        metadata = json_object(body) if body.strip() else {}
        return metadata, headers.get("X-Upload-Content-Type", OCTET_STREAM), b""
    if kind == "media":
        return {}, headers.get("Content-Type", OCTET_STREAM), body
    raise ValueError(f"The sandbox does not support uploadType={kind}.")
