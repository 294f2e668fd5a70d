"""Node-sourced Azure identities (`source = "node"`) in the policy and in the launch token: how
they are written, read back, and refused by a sidecar that does not know them."""

from __future__ import annotations

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.identities import AzureIdentity, AzureNodeIdentity, parse_identity
from credsidecar.launch.grants import AzureGrant, Grants

CLIENT = "00000000-0000-4000-8000-0000000000c2"
TENANT = "00000000-0000-4000-8000-000000000001"
MI_RES_ID = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/node-bob"
)


def node(table: dict[str, object]) -> AzureNodeIdentity:
    identity = parse_identity("azure", "n", {"source": "node", **table}, {})
    assert isinstance(identity, AzureNodeIdentity)
    return identity


@pytest.mark.parametrize(
    ("table", "claim"),
    [
        ({}, {"name": "n", "source": "node"}),
        ({"client_id": CLIENT}, {"name": "n", "source": "node", "client_id": CLIENT}),
        ({"mi_res_id": MI_RES_ID}, {"name": "n", "source": "node", "resource_id": MI_RES_ID}),
    ],
    ids=["system-assigned", "client_id", "mi_res_id"],
)
def test_a_node_identity_is_granted_with_its_selector_and_no_tenant(
    table: dict[str, object], claim: dict[str, str]
) -> None:
    grant = node(table).grant("alice")
    assert grant.to_claim() == claim
    assert AzureGrant.from_claim(grant.to_claim()) == grant
    assert node(table).audience is None  # the issuer mints nothing for it


def test_a_federated_grant_claim_is_unchanged() -> None:
    """No `source` key for federation: what older sidecars read stays byte for byte the same."""
    identity = parse_identity("azure", "f", {"tenant_id": TENANT, "client_id": CLIENT}, {})
    assert isinstance(identity, AzureIdentity)
    claim = identity.grant("alice").to_claim()
    assert "source" not in claim
    assert AzureGrant.from_claim(claim).source == "federation"


def test_a_sidecar_reading_a_node_claim_as_federation_refuses_it() -> None:
    """What a sidecar that predates `source` does (it ignores the key): the claim has no
    tenant_id, so it stops at start-up rather than federating as the node's identity."""
    claim = node({"client_id": CLIENT}).grant("alice").to_claim()
    older = {k: v for k, v in claim.items() if k != "source"}
    with pytest.raises(ConfigError, match=r"identities\.azure\[0\]\.tenant_id is missing"):
        AzureGrant.from_claim(older)


def test_an_unknown_source_is_refused_naming_the_field_and_the_fix() -> None:
    claim = {"name": "n", "source": "hsm", "tenant_id": TENANT, "client_id": CLIENT}
    with pytest.raises(ConfigError) as info:
        Grants.from_claim({"azure": [claim]})
    message = info.value.message
    assert "identities.azure[0].source is 'hsm', which this sidecar does not know" in message
    assert "upgrade the sidecar" in message


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"client_id": CLIENT, "mi_res_id": MI_RES_ID}, "mi_res_id cannot be set with client_id"),
        ({"client_id": "not-a-guid"}, "client_id 'not-a-guid' is not valid (a GUID)"),
        ({"mi_res_id": "/subscriptions/x"}, "mi_res_id '/subscriptions/x' is not valid"),
        ({"tenant_id": TENANT}, "tenant_id is not a known setting"),
    ],
)
def test_policy_errors_for_node_identities_name_the_key(
    table: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        node(table)
    assert f"azure identity 'n': {fragment}" in info.value.message


def test_a_source_other_than_federation_or_node_is_a_policy_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_identity("azure", "n", {"source": "vm", "tenant_id": TENANT, "client_id": CLIENT}, {})
    assert "azure identity 'n': source 'vm' is not one of federation, node" in info.value.message
