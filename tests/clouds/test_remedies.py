"""The "what to do" sentences: built from what the cloud was shown, bounded, never the token."""

from __future__ import annotations

import base64
import json

from credsidecar.clouds.remedies import Presented, aws_fix, gcp_principal
from credsidecar.errors import MAX_QUOTED, bounded

PROVIDER = "//iam.googleapis.com/projects/7/locations/global/workloadIdentityPools/p/providers/x"


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_presented_reads_issuer_subject_and_audience_from_the_token() -> None:
    seen = Presented.of(jwt({"iss": "https://i.example/", "sub": "alice", "aud": ["a", "b"]}), "x")
    assert (seen.issuer, seen.subject, seen.audience) == ("https://i.example/", "alice", "a")
    assert seen.host_path == "i.example"


def test_a_token_that_is_no_jwt_is_said_as_such_and_never_quoted() -> None:
    seen = Presented.of("not-a-jwt-secret", "sts.amazonaws.com")
    assert seen.issuer == "(the token names no issuer)" and seen.audience == "sts.amazonaws.com"
    assert "not-a-jwt-secret" not in aws_fix("trust", "arn:aws:iam::1:role/r", seen)


def test_claims_an_outsider_controls_are_cut_to_one_bounded_line() -> None:
    seen = Presented.of(jwt({"iss": "https://i", "sub": "a\n" + "b" * 10_000}), "aud")
    assert len(seen.subject) == MAX_QUOTED and seen.subject.endswith("...")
    assert "\n" not in seen.subject
    assert bounded("short") == "short"


def test_the_gcp_principal_is_the_pools_subject_member() -> None:
    assert gcp_principal(PROVIDER, "alice") == (
        "principal://iam.googleapis.com/projects/7/locations/global/workloadIdentityPools/p/"
        "subject/alice"
    )
