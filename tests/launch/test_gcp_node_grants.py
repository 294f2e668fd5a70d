"""Node-sourced GCP identities (`source = "node"`) in the policy and in the launch token: how
they are written, read back, and refused by a sidecar that does not know them."""

from __future__ import annotations

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.identities import GcpIdentity, GcpNodeIdentity, parse_identity
from credsidecar.launch.grants import GcpGrant, Grants

SA = "alice@sandbox-project.iam.gserviceaccount.com"
AUDIENCE = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"


def node(table: dict[str, object]) -> GcpNodeIdentity:
    identity = parse_identity("gcp", "n", {"source": "node", **table}, {})
    assert isinstance(identity, GcpNodeIdentity)
    return identity


@pytest.mark.parametrize(
    ("table", "claim"),
    [
        ({}, {"name": "n", "source": "node"}),
        ({"service_account": SA, "project_id": "p"},
         {"name": "n", "source": "node", "service_account": SA, "project_id": "p"}),
    ],
    ids=["the node's own account", "impersonating"],
)  # fmt: skip
def test_a_node_identity_is_granted_without_an_audience(
    table: dict[str, object], claim: dict[str, str]
) -> None:
    grant = node(table).grant("alice")
    assert grant.to_claim() == claim
    assert GcpGrant.from_claim(grant.to_claim()) == grant
    assert node(table).audience is None  # the issuer mints nothing for it


def test_a_federated_grant_claim_is_unchanged() -> None:
    """No `source` key for federation: what older sidecars read stays the same."""
    identity = parse_identity("gcp", "f", {"audience": AUDIENCE, "service_account": SA}, {})
    assert isinstance(identity, GcpIdentity)
    claim = identity.grant("alice").to_claim()
    assert claim == {"name": "f", "audience": AUDIENCE, "service_account": SA}
    assert GcpGrant.from_claim(claim).source == "federation"


def test_a_sidecar_reading_a_node_claim_as_federation_refuses_it() -> None:
    """What a sidecar that predates `source` does (it ignores the key): the claim has no
    audience, so it stops at start-up rather than federating for the node's identity."""
    claim = node({"service_account": SA}).grant("alice").to_claim()
    older = {k: v for k, v in claim.items() if k != "source"}
    with pytest.raises(ConfigError, match=r"identities\.gcp\[0\]\.audience is missing"):
        GcpGrant.from_claim(older)


def test_an_unknown_source_is_refused_naming_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        Grants.from_claim({"gcp": [{"name": "n", "source": "hsm", "audience": AUDIENCE}]})
    message = info.value.message
    assert "identities.gcp[0].source is 'hsm', which this sidecar does not know" in message
    assert "upgrade the sidecar" in message


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"service_account": "not-an-email"}, "service_account 'not-an-email' is not valid"),
        ({"audience": AUDIENCE}, "audience is not a known setting"),
    ],
)
def test_policy_errors_for_node_identities_name_the_key(
    table: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        node(table)
    assert f"gcp identity 'n': {fragment}" in info.value.message


def test_a_source_other_than_federation_or_node_is_a_policy_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_identity("gcp", "n", {"source": "vm", "audience": AUDIENCE}, {})
    assert "gcp identity 'n': source 'vm' is not one of federation, node" in info.value.message
