"""Cloud limits on federated tokens, checked before anything is signed.

A token that breaks one of these is refused by the cloud with an opaque error far from its cause,
so the issuer refuses to sign it and says which limit and which value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from credsidecar.errors import LimitExceeded

__all__ = [
    "AWS_TAGS_CLAIM",
    "MAX_JWT_CHARS",
    "check_claims",
    "check_jwt_size",
    "check_source_identity",
    "check_subject",
    "check_tags",
]

# AWS STS rejects web identity tokens over 20,000 characters (AssumeRoleWithWebIdentity docs);
# the other clouds accept at least as much.
MAX_JWT_CHARS = 20_000
# GCP maps `sub` to google.subject, which may be at most 127 bytes.
MAX_SUBJECT_BYTES = 127
# AWS SourceIdentity: 2-64 characters of [\w+=,.@-].
SOURCE_IDENTITY_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
# AWS session tags: at most 50, key <= 128 characters, value <= 256 characters.
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256

AWS_SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"
TIME_CLAIMS = ("iat", "nbf", "exp")


def check_subject(subject: str) -> None:
    size = len(subject.encode())
    if not subject or size > MAX_SUBJECT_BYTES:
        raise LimitExceeded(
            f"subject {subject[:40]!r} is {size} bytes; GCP accepts 1-{MAX_SUBJECT_BYTES} bytes, "
            "so give the user a shorter `subject` in the policy"
        )


def check_source_identity(value: str) -> None:
    if not SOURCE_IDENTITY_RE.fullmatch(value):
        raise LimitExceeded(
            f"AWS source identity {value[:80]!r} must be 2-64 characters of letters, digits "
            "and _+=,.@-; choose a user id that fits or set `aws_source_identity` for the user"
        )


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise LimitExceeded(
            f"{len(tags)} AWS session tags requested; AWS allows at most {MAX_TAGS}, "
            "so drop some `session_tags` from the identity"
        )
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY:
            raise LimitExceeded(
                f"AWS session tag key {key[:40]!r} is {len(key)} characters; "
                f"the limit is 1-{MAX_TAG_KEY}"
            )
        if len(value) > MAX_TAG_VALUE:
            raise LimitExceeded(
                f"AWS session tag {key!r} has a {len(value)}-character value; "
                f"the limit is {MAX_TAG_VALUE}"
            )


def check_claims(claims: Mapping[str, Any]) -> None:
    """Checks every limit that applies to a claim set about to be signed."""
    for name in TIME_CLAIMS:
        if name in claims and (not isinstance(claims[name], int) or isinstance(claims[name], bool)):
            raise LimitExceeded(f"claim {name!r} must be an integer number of seconds")
    check_subject(str(claims.get("sub", "")))
    if AWS_SOURCE_IDENTITY_CLAIM in claims:
        check_source_identity(claims[AWS_SOURCE_IDENTITY_CLAIM])
    if AWS_TAGS_CLAIM in claims:
        principal_tags = claims[AWS_TAGS_CLAIM].get("principal_tags", {})
        check_tags({k: v[0] if v else "" for k, v in principal_tags.items()})


def check_jwt_size(token: str) -> None:
    if len(token) > MAX_JWT_CHARS:
        raise LimitExceeded(
            f"the signed token is {len(token)} characters; AWS accepts at most {MAX_JWT_CHARS}, "
            "so trim session tags, session policy or identity details in the policy"
        )
