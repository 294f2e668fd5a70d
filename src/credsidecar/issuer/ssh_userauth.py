"""What the stored-key signer agrees to sign: exactly an SSH `publickey` login request.

The issuer signs with a member's stored key inside itself so that the key never leaves it; this
check keeps that signer from being a general-purpose signing oracle for the key.
"""

from __future__ import annotations

import struct

from credsidecar.errors import BadRequest

__all__ = ["SSH_MSG_USERAUTH_REQUEST", "check_userauth_request"]

SSH_MSG_USERAUTH_REQUEST = 50


def check_userauth_request(data: bytes, username: str, key_blob: bytes) -> None:
    """`data` must be what an SSH client signs to log in as `username` with this key:
    string session id, byte 50, string user, string "ssh-connection", string "publickey",
    bool TRUE, string algorithm, string key (RFC 4252 section 7)."""
    refused = BadRequest(
        "data is not an SSH publickey authentication request for this "
        "credential's username and key; nothing else is signed"
    )
    fields: list[bytes] = []
    offset = 0

    def string() -> bytes:
        nonlocal offset
        if offset + 4 > len(data):
            raise refused
        (length,) = struct.unpack_from(">I", data, offset)
        if offset + 4 + length > len(data):
            raise refused
        value = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        return value

    string()  # session id
    if data[offset : offset + 1] != bytes([SSH_MSG_USERAUTH_REQUEST]):
        raise refused
    offset += 1
    fields = [string(), string(), string()]
    if fields != [username.encode(), b"ssh-connection", b"publickey"]:
        raise refused
    if data[offset : offset + 1] != b"\x01":
        raise refused
    offset += 1
    string()  # the signature algorithm
    if string() != key_blob or offset != len(data):
        raise refused
