"""Reading a launch token's payload without a JOSE library."""

from __future__ import annotations

import base64

import jwt as pyjwt
import pytest

from credsidecar.launch.jwt_parts import MAX_TOKEN_CHARS, unverified_payload


def test_the_payload_of_a_signed_token_is_read_as_signed() -> None:
    claims = {"iss": "https://id.example", "sub": "alice", "identities": {"aws": [{"n": "é"}]}}
    token = pyjwt.encode(claims, "k" * 32, algorithm="HS256")
    assert unverified_payload(token) == claims


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "a.b",
        f"{b64(b'{}')}..sig",
        f"{b64(b'{}')}.{b64(b'{}')}.s.extra",
        f"{b64(b'[]')}.{b64(b'{}')}.s",  # the header must be an object
        f"{b64(b'{}')}.{b64(b'{}')}!.s",  # outside the base64url alphabet
        f"{b64(b'{}')}.{b64(b'not json')}.s",
        b64(b"{}") + "." + b64(bytes([0xFF, 0xFE])) + ".s",  # not UTF-8
        "a" * (MAX_TOKEN_CHARS + 1),
    ],
)
def test_anything_but_a_compact_jwt_is_a_value_error(token: str) -> None:
    with pytest.raises(ValueError):
        unverified_payload(token)
