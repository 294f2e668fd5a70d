"""Web-identity trust policies for sandbox roles, in IAM's JSON form, and their evaluation.

Supports what federation trust policies use: a `Federated` principal naming the OIDC provider,
`sts:AssumeRoleWithWebIdentity`, and `StringEquals`/`StringLike` on `<provider>:sub|aud`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from credsidecar.sandbox.seed import ACCOUNT, SandboxRole

__all__ = ["provider_arn", "provider_id", "trust_allows", "trust_policy"]


def provider_id(issuer: str) -> str:
    """IAM names OIDC providers by issuer URL without the scheme."""
    return issuer.split("://", 1)[-1].rstrip("/")


def provider_arn(issuer: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider_id(issuer)}"


def trust_policy(role: SandboxRole, issuer: str, audience: str) -> dict[str, Any]:
    pid = provider_id(issuer)
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn(issuer)},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{pid}:sub": list(role.subjects),
                                           f"{pid}:aud": audience}},
        }],
    }  # fmt: skip


def _values(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _conditions_hold(
    conditions: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]
) -> bool:
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            actual = context.get(key)
            if actual is None:
                return False
            if operator == "StringEquals":
                ok = actual in _values(expected)
            elif operator == "StringLike":
                ok = any(fnmatch.fnmatchcase(actual, pattern) for pattern in _values(expected))
            else:
                return False  # unknown operators fail closed
            if not ok:
                return False
    return True


def trust_allows(policy: Mapping[str, Any], issuer: str, claims: Mapping[str, Any]) -> bool:
    pid = provider_id(issuer)
    aud = claims.get("aud")
    context = {f"{pid}:sub": str(claims.get("sub", "")),
               f"{pid}:aud": str(aud[0] if isinstance(aud, list) else aud)}  # fmt: skip
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        if "sts:AssumeRoleWithWebIdentity" not in _values(statement.get("Action", [])):
            continue
        if provider_arn(issuer) not in _values(statement.get("Principal", {}).get("Federated", [])):
            continue
        if _conditions_hold(statement.get("Condition", {}), context):
            return True
    return False
