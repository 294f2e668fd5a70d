"""The example policy is generated from the sandbox seed and grants exactly its identities."""

from __future__ import annotations

import pytest

from credsidecar.issuer.example import EXAMPLE_POLICY
from credsidecar.issuer.identities import (
    AwsIdentity,
    AwsNodeIdentity,
    AzureIdentity,
    AzureNodeIdentity,
    GcpIdentity,
    GcpNodeIdentity,
)
from credsidecar.issuer.policy import Policy, parse_policy
from credsidecar.sandbox.seed import (
    AWS_NODE_IDENTITIES,
    AZURE_IDENTITIES,
    AZURE_NODE_IDENTITIES,
    AZURE_TENANT_ID,
    GCP_AUDIENCE,
    GCP_NODE_IDENTITIES,
    GCP_PROJECT_ID,
    GCP_PROJECT_NUMBER,
    GCP_SERVICE_ACCOUNTS,
    ROLES,
    USERS,
    WORKSPACE,
)


def seeded(user: str) -> dict[str, set[str]]:
    """Per provider, the sandbox identities that admit `user` (trust policy, IAM binding, or
    the users the seed gives a managed identity)."""
    return {
        "aws": {r.name for r in ROLES if user in r.subjects}
        | {i.name for i in AWS_NODE_IDENTITIES if user in i.users},
        "gcp": {a.email.split("@")[0] for a in GCP_SERVICE_ACCOUNTS if user in a.subjects}
        | {i.name for i in GCP_NODE_IDENTITIES if user in i.users},
        "azure": {i.name for i in (*AZURE_IDENTITIES, *AZURE_NODE_IDENTITIES) if user in i.users},
    }


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(EXAMPLE_POLICY, "the example policy")


@pytest.mark.parametrize("user", [*USERS, "carol"])
def test_each_user_is_granted_exactly_the_seeded_identities_that_admit_them(
    policy: Policy, user: str
) -> None:
    for provider, names in seeded(user).items():
        granted = {i.name for i in policy.granted(user, None, None, provider)}
        if user in policy.workspaces[WORKSPACE].members:
            granted |= {i.name for i in policy.granted(user, WORKSPACE, None, provider)}
        assert granted == names, (user, provider)


def test_every_seeded_identity_is_in_the_policy_with_the_seeds_values(policy: Policy) -> None:
    aws = policy.identities["aws"]
    assert set(aws) == {r.name for r in ROLES} | {i.name for i in AWS_NODE_IDENTITIES}
    for role in ROLES:
        identity = aws[role.name]
        assert isinstance(identity, AwsIdentity)
        assert (identity.role_arn, dict(identity.session_tags)) == (
            role.arn,
            dict(role.session_tags),
        )
    gcp = policy.identities["gcp"]
    assert set(gcp) == {a.email.split("@")[0] for a in GCP_SERVICE_ACCOUNTS} | {
        i.name for i in GCP_NODE_IDENTITIES
    }
    for account in GCP_SERVICE_ACCOUNTS:
        identity = gcp[account.email.split("@")[0]]
        assert isinstance(identity, GcpIdentity)
        assert (identity.gcp_audience, identity.service_account) == (GCP_AUDIENCE, account.email)
        assert (identity.project_id, identity.project_number) == (
            GCP_PROJECT_ID,
            GCP_PROJECT_NUMBER,
        )
    azure = policy.identities["azure"]
    assert set(azure) == {i.name for i in (*AZURE_IDENTITIES, *AZURE_NODE_IDENTITIES)}
    for seed in AZURE_IDENTITIES:
        identity = azure[seed.name]
        assert isinstance(identity, AzureIdentity)
        assert (identity.tenant_id, identity.client_id, identity.subject) == (
            AZURE_TENANT_ID, seed.client_id, seed.subject,
        )  # fmt: skip
        assert (identity.object_id, identity.resource_id) == (seed.object_id, seed.resource_id)


def test_the_policy_explains_itself_to_a_newcomer() -> None:
    """Each section of the generated text starts with a comment saying what it holds."""
    for heading in ("# Users:", "# AWS:", "# GCP:", "# Azure:", "# HPC:", "# Grants:"):
        assert heading in EXAMPLE_POLICY


def test_node_identities_are_in_the_policy_by_their_selectors(policy: Policy) -> None:
    """The node's identities as `source = "node"`: the system-assigned one by no selector,
    the user-assigned ones by client_id (node-alice) or mi_res_id (node-bob)."""
    azure = policy.identities["azure"]
    found = {}
    for seed in AZURE_NODE_IDENTITIES:
        identity = azure[seed.name]
        assert isinstance(identity, AzureNodeIdentity)
        found[seed.name] = (identity.client_id, identity.mi_res_id)
    by_name = {i.name: i for i in AZURE_NODE_IDENTITIES}
    assert found == {
        "node": (None, None),
        "node-alice": (by_name["node-alice"].client_id, None),
        "node-bob": (None, by_name["node-bob"].resource_id),
    }


def test_alice_keeps_her_federated_identity_as_the_default(policy: Policy) -> None:
    names = [i.name for i in policy.granted("alice", WORKSPACE, None, "azure")]
    assert names == ["alice", "node-alice", "genomics-pipelines"]


def test_gcp_node_identities_are_in_the_policy_with_their_service_accounts(policy: Policy) -> None:
    """The node's service account as `source = "node"`: on its own, or impersonating alice's
    or bob's account; alice alone is granted node-alice, after her federated default."""
    gcp = policy.identities["gcp"]
    for seed in GCP_NODE_IDENTITIES:
        identity = gcp[seed.name]
        assert isinstance(identity, GcpNodeIdentity)
        assert (identity.service_account, identity.project_id) == (
            seed.service_account, GCP_PROJECT_ID,
        )  # fmt: skip
    names = [i.name for i in policy.granted("alice", WORKSPACE, None, "gcp")]
    assert names == ["alice", "node-alice"]
    assert [i.name for i in policy.granted("bob", WORKSPACE, None, "gcp")] == ["bob"]


def test_aws_node_identities_are_in_the_policy_with_their_roles(policy: Policy) -> None:
    """The node's instance profile as `source = "node"`: on its own, or assuming alice-data
    (read-only by its session policy) or bob-data; alice alone is granted node-alice."""
    aws = policy.identities["aws"]
    for seed in AWS_NODE_IDENTITIES:
        identity = aws[seed.name]
        assert isinstance(identity, AwsNodeIdentity)
        assert (identity.role_arn, identity.session_policy) == (seed.role_arn, seed.session_policy)
    names = [i.name for i in policy.granted("alice", WORKSPACE, None, "aws")]
    assert names == ["alice-data", "node-alice", "genomics-readonly"]
    assert "node-alice" not in [i.name for i in policy.granted("bob", WORKSPACE, None, "aws")]
