"""A working example configuration: what `credsidecar dev` starts and the README shows.

The policy is generated from the sandbox's seed (sandbox/seed.py), so the identities it grants
are exactly the roles, service accounts and managed identities the sandbox clouds hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE
from credsidecar.issuer.config import new_api_key
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
    WORKSPACE_MEMBERS,
)

__all__ = ["EXAMPLE_POLICY", "example_policy", "write_example"]


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these ASCII values)."""
    return json.dumps(value)


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(map(_q, values)) + "]"


def _grant(provider: str, name: str, users: Iterable[str]) -> str:
    """One identity's grant: to the workspace when every member holds it, else to its users."""
    users = tuple(users)
    if len(users) > 1 and set(users) == set(WORKSPACE_MEMBERS):
        who = f"workspaces = {_list([WORKSPACE])}"
    else:
        who = f"users = {_list(users)}"
    return f"[[grants]]\n{who}\nprovider = {_q(provider)}\nidentities = {_list([name])}\n"


def example_policy() -> str:
    """The example identity policy, from the sandbox seed."""
    users = "".join(
        f"[[users]]\nid = {_q(user)}\nemail = {_q(user + '@example.org')}\n"
        f"name = {_q(user.capitalize())}\n\n"
        for user in USERS
    )
    aws = "".join(
        f"[identities.aws.{role.name}]\nrole_arn = {_q(role.arn)}\n"
        + (
            "session_tags = { "
            + ", ".join(f"{key} = {_q(value)}" for key, value in role.session_tags)
            + " }\n"
            if role.session_tags
            else ""
        )
        + "\n"
        for role in ROLES
    )
    aws_node = "".join(
        f'[identities.aws.{i.name}]\nsource = "node"\n'
        + (
            f"role_arn = {_q(i.role_arn)}\n"
            if i.role_arn
            else "# no role_arn: the instance profile's own credentials\n"
        )
        + (f"session_policy = '{i.session_policy}'\n" if i.session_policy else "")
        + "\n"
        for i in AWS_NODE_IDENTITIES
    )
    gcp = "".join(
        f"[identities.gcp.{account.email.split('@')[0]}]\n"
        f"audience = {_q(GCP_AUDIENCE)}\n"
        f"service_account = {_q(account.email)}\n"
        f"project_id = {_q(GCP_PROJECT_ID)}\n"
        f"project_number = {_q(GCP_PROJECT_NUMBER)}\n\n"
        for account in GCP_SERVICE_ACCOUNTS
    )
    azure = "".join(
        f"[identities.azure.{identity.name}]\n"
        f"tenant_id = {_q(AZURE_TENANT_ID)}\n"
        f"client_id = {_q(identity.client_id)}\n"
        f"object_id = {_q(identity.object_id)}\n"
        f"resource_id = {_q(identity.resource_id)}\n\n"
        for identity in AZURE_IDENTITIES
    )
    node = "".join(
        f'[identities.azure.{i.name}]\nsource = "node"\n'
        + (
            "# no client_id / mi_res_id: the node's system-assigned identity\n"
            if i.system_assigned
            else f"mi_res_id = {_q(i.resource_id)}\n"
            if i.name.endswith("bob")
            else f"client_id = {_q(i.client_id)}\n"
        )
        + "\n"
        for i in AZURE_NODE_IDENTITIES
    )
    gcp_node = "".join(
        f'[identities.gcp.{i.name}]\nsource = "node"\n'
        + (
            f"service_account = {_q(i.service_account)}\n"
            if i.service_account
            else "# no service_account: the node's own\n"
        )
        + f"project_id = {_q(GCP_PROJECT_ID)}\n\n"
        for i in GCP_NODE_IDENTITIES
    )
    grants = "\n".join(
        [
            *(_grant("aws", role.name, role.subjects) for role in ROLES),
            *(_grant("aws", i.name, i.users) for i in AWS_NODE_IDENTITIES if i.users),
            *(
                _grant("gcp", account.email.split("@")[0], account.subjects)
                for account in GCP_SERVICE_ACCOUNTS
            ),
            *(_grant("gcp", i.name, i.users) for i in GCP_NODE_IDENTITIES if i.users),
            *(_grant("azure", i.name, i.users) for i in AZURE_IDENTITIES),
            *(_grant("azure", i.name, i.users) for i in AZURE_NODE_IDENTITIES if i.users),
            _grant("hpc", "sandbox-cluster", WORKSPACE_MEMBERS),
        ]
    )
    return f"""\
# Identity policy: users, workspaces, identities per provider, and grants.
# (Generated from the sandbox's seed, credsidecar/sandbox/seed.py: every identity below exists
# in the sandbox clouds of `credsidecar dev`.)

# The audience of the launch tokens the issuer hands AWS STS (AssumeRoleWithWebIdentity).
[providers.aws]
audience = {_q(AWS_DEFAULT_AUDIENCE)}

# Users: `id` is the subject clouds see (the `sub` of the tokens the issuer signs).
{users}\
[[users]]
id = "carol"
email = "carol@example.org"
name = "Carol (no grants yet)"
owner = true                     # manages HPC clusters (credsidecar hpc cluster ...)

# A workspace's grants apply to launches in it, for each member.
[[workspaces]]
id = {_q(WORKSPACE)}
members = {_list(WORKSPACE_MEMBERS)}

# AWS: IAM roles whose trust policy admits the issuer's tokens for these subjects.
{aws}\
# AWS, the node's own instance profile (source = "node"): the sidecar reads its credentials
# from the node's IMDS and, with role_arn, assumes that role with them (STS AssumeRole,
# RoleSessionName user@run, narrowed by session_policy). node-alice (alice-data, read-only)
# goes to alice alone; node-bob and the instance profile itself are granted to nobody.
{aws_node}\
# GCP: service accounts the workload identity pool's principals may impersonate; the audience is
# the pool provider's resource name.
{gcp}\
# GCP, the node's own service account (source = "node"): the sidecar asks the node's metadata
# server for its token and, with service_account, impersonates that account with it (the node's
# account holds roles/iam.serviceAccountTokenCreator on it). node-alice goes to alice alone;
# node-bob and the node's own account are granted to nobody.
{gcp_node}\
# Azure: user-assigned managed identities, each with one federated credential whose subject is
# "credsidecar:azure:NAME" (the default), so Entra tells them apart; the issuer decides who may
# use which.
{azure}\
# Azure, the node's own managed identities (source = "node"): the sidecar asks the node's IMDS
# for them, only for those the launch is granted. node-alice goes to alice alone; node-bob and
# the system-assigned identity stay with the node, granted to nobody (every job on the node
# would share the system-assigned one: grant it deliberately, e.g. to one workspace).
{node}\
# HPC: a Slurm cluster reached over SSH as the user's Linux account.
[identities.hpc.sandbox-cluster]
scheduler = "slurm"
host = "127.0.0.1"
port = 2222
usernames = {{ {", ".join(f"{user} = {_q(user)}" for user in WORKSPACE_MEMBERS)} }}

# Grants: who may use which identity. For one launch the user's own grants come first (their
# first identity is the default), then the workspace's.
{grants}"""


EXAMPLE_POLICY = example_policy()


def write_example(directory: Path, port: int, *, stored_keys: bool = False) -> tuple[Path, str]:
    """Writes issuer.toml and policy.toml; returns the config path and a fresh platform API key.

    With `stored_keys`, also a key-encryption key (`hpc-kek`, 0600) named in `[hpc]`, so
    members can store SSH keys for stored-key clusters."""
    directory.mkdir(parents=True, exist_ok=True)
    key, digest = new_api_key()
    hpc = ""
    if stored_keys:
        from credsidecar.issuer.sealing import new_kek_text
        from credsidecar.private_files import write_private_atomic

        write_private_atomic(directory / "hpc-kek", new_kek_text())
        hpc = '\n[hpc]\nkey_encryption_key_file = "hpc-kek"\n'

    (directory / "policy.toml").write_text(EXAMPLE_POLICY, encoding="utf-8")
    config = directory / "issuer.toml"
    config.write_text(
        f"""\
issuer_url = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
state_dir = "state"
policy = "policy.toml"
audit_log = "audit.jsonl"

[[platform_keys]]
name = "dev-platform"
sha256 = "{digest}"
{hpc}""",
        encoding="utf-8",
    )
    return config, key
