"""Node-sourced AWS identities (`source = "node"`) in the policy and in the launch token: how
they are written, read back, and refused by a sidecar that does not know them."""

from __future__ import annotations

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.identities import AwsIdentity, AwsNodeIdentity, parse_identity
from credsidecar.launch.grants import AwsGrant, Grants

ROLE = "arn:aws:iam::123456789012:role/alice-data"
POLICY = '{"Version":"2012-10-17","Statement":[]}'


def node(table: dict[str, object]) -> AwsNodeIdentity:
    identity = parse_identity("aws", "n", {"source": "node", **table}, {})
    assert isinstance(identity, AwsNodeIdentity)
    return identity


@pytest.mark.parametrize(
    ("table", "claim"),
    [
        ({}, {"name": "n", "source": "node"}),
        ({"role_arn": ROLE, "session_policy": POLICY},
         {"name": "n", "source": "node", "assume_role_arn": ROLE, "session_policy": POLICY}),
    ],
    ids=["the instance profile", "assuming a role"],
)  # fmt: skip
def test_a_node_identity_is_granted_without_role_arn_or_audience(
    table: dict[str, object], claim: dict[str, str]
) -> None:
    grant = node(table).grant("alice")
    assert grant.to_claim() == claim
    assert AwsGrant.from_claim(grant.to_claim()) == grant
    assert node(table).audience is None  # the issuer mints nothing for it


def test_a_federated_grant_claim_is_unchanged() -> None:
    identity = parse_identity("aws", "f", {"role_arn": ROLE}, {})
    assert isinstance(identity, AwsIdentity)
    claim = identity.grant("alice").to_claim()
    assert claim == {"name": "f", "role_arn": ROLE, "audience": "sts.amazonaws.com"}
    assert AwsGrant.from_claim(claim).source == "federation"


def test_a_sidecar_reading_a_node_claim_as_federation_refuses_it() -> None:
    """What a sidecar that predates `source` does (it ignores unknown keys): the claim has no
    role_arn, so it stops at start-up rather than calling AssumeRoleWithWebIdentity."""
    claim = node({"role_arn": ROLE}).grant("alice").to_claim()
    older = {k: v for k, v in claim.items() if k != "source"}
    with pytest.raises(ConfigError, match=r"identities\.aws\[0\]\.role_arn is missing"):
        AwsGrant.from_claim(older)


def test_an_unknown_source_is_refused_naming_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        Grants.from_claim({"aws": [{"name": "n", "source": "hsm", "role_arn": ROLE}]})
    message = info.value.message
    assert "identities.aws[0].source is 'hsm', which this sidecar does not know" in message
    assert "upgrade the sidecar" in message


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"session_policy": POLICY}, "session_policy needs role_arn"),
        ({"role_arn": "alice-data"}, "role_arn 'alice-data' is not valid"),
        ({"session_tags": {"a": "b"}}, "session_tags is not a known setting"),
    ],
)
def test_policy_errors_for_node_identities_name_the_key(
    table: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        node(table)
    assert f"aws identity 'n': {fragment}" in info.value.message


def test_a_source_other_than_federation_or_node_is_a_policy_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_identity("aws", "n", {"source": "vm", "role_arn": ROLE}, {})
    assert "aws identity 'n': source 'vm' is not one of federation, node" in info.value.message
