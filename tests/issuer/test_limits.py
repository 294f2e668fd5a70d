"""Cloud limits are enforced before signing, each naming the limit and the value."""

from __future__ import annotations

import pytest

from credsidecar.errors import LimitExceeded
from credsidecar.issuer.limits import (
    AWS_SOURCE_IDENTITY_CLAIM,
    AWS_TAGS_CLAIM,
    MAX_JWT_CHARS,
    check_claims,
    check_jwt_size,
    check_source_identity,
    check_subject,
    check_tags,
)


def test_subject_of_127_bytes_is_accepted_and_128_refused() -> None:
    check_subject("a" * 127)
    with pytest.raises(LimitExceeded, match="128 bytes"):
        check_subject("a" * 128)


def test_subject_limit_counts_bytes_not_characters() -> None:
    with pytest.raises(LimitExceeded, match="128 bytes"):
        check_subject("é" * 64)


@pytest.mark.parametrize("value", ["al", "alice.o'neil"[:5], "a@b.c", "x" * 64, "a+b=c,d-e_f"])
def test_valid_source_identities(value: str) -> None:
    check_source_identity(value)


@pytest.mark.parametrize("value", ["a", "x" * 65, "has space", "sl/ash", "ünï"])
def test_invalid_source_identities(value: str) -> None:
    with pytest.raises(LimitExceeded, match="source identity"):
        check_source_identity(value)


def test_fifty_tags_pass_and_fifty_one_fail() -> None:
    check_tags({f"k{i}": "v" for i in range(50)})
    with pytest.raises(LimitExceeded, match="51 AWS session tags"):
        check_tags({f"k{i}": "v" for i in range(51)})


def test_tag_key_and_value_lengths() -> None:
    check_tags({"k" * 128: "v" * 256})
    with pytest.raises(LimitExceeded, match="129 characters"):
        check_tags({"k" * 129: "v"})
    with pytest.raises(LimitExceeded, match="257-character value"):
        check_tags({"k": "v" * 257})


def test_time_claims_must_be_integers() -> None:
    with pytest.raises(LimitExceeded, match="'exp'"):
        check_claims({"sub": "a", "exp": 1.5})
    with pytest.raises(LimitExceeded, match="'iat'"):
        check_claims({"sub": "a", "iat": True})


def test_check_claims_applies_aws_limits() -> None:
    with pytest.raises(LimitExceeded, match="source identity"):
        check_claims({"sub": "a", AWS_SOURCE_IDENTITY_CLAIM: "x"})
    tags = {f"k{i}": ["v"] for i in range(51)}
    with pytest.raises(LimitExceeded, match="51 AWS session tags"):
        check_claims({"sub": "a", AWS_TAGS_CLAIM: {"principal_tags": tags}})


def test_token_size_limit() -> None:
    check_jwt_size("x" * MAX_JWT_CHARS)
    with pytest.raises(LimitExceeded, match="20001 characters"):
        check_jwt_size("x" * (MAX_JWT_CHARS + 1))
