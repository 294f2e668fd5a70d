"""`credsidecar issuer explain`: what a launch would get per provider, and why, or why nothing,
decided by the same functions that mint launch tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.audit import AuditLog
from credsidecar.errors import Forbidden
from credsidecar.issuer.assembly import Issuer, assemble
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.explain import Explanation, explain, render
from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.launch_request import LaunchRequest
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.store import Store
from tests.support.clock import FakeClock

GCP_AUDIENCE = (
    "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
)
POLICY = f"""
[[users]]
id = "alice"
[[users]]
id = "bob"
[[users]]
id = "carol"
[[users]]
id = "dave"
disabled = true
[[users]]
id = "erin"

[[workspaces]]
id = "genomics"
members = ["alice", "bob", "dave", "erin"]

[identities.aws.alice-data]
role_arn = "arn:aws:iam::123456789012:role/alice-data"
[identities.aws.shared-ro]
role_arn = "arn:aws:iam::123456789012:role/shared-ro"
[identities.aws.rnaseq]
role_arn = "arn:aws:iam::123456789012:role/rnaseq"

[identities.gcp.alice]
audience = "{GCP_AUDIENCE}"

[identities.hpc.cluster]
host = "login.example.org"
usernames = {{ alice = "alice" }}

[[grants]]
users = ["alice"]
provider = "aws"
identities = ["alice-data"]

[[grants]]
workspaces = ["genomics"]
provider = "aws"
identities = ["shared-ro"]

[[grants]]
users = ["bob"]
provider = "aws"
identities = ["rnaseq"]
pipelines = ["nf-core/rnaseq"]

[[grants]]
users = ["alice"]
provider = "gcp"
identities = ["alice"]

[[grants]]
workspaces = ["genomics"]
provider = "hpc"
identities = ["cluster"]
"""


@pytest.fixture
def policy_config(tmp_path: Path) -> Path:
    config_path, _ = write_example(tmp_path, port=8400)
    (tmp_path / "policy.toml").write_text(POLICY)
    return config_path


@pytest.fixture
def issuer(policy_config: Path, clock: FakeClock) -> Iterator[Issuer]:
    config = load_config(policy_config)
    audit = AuditLog.open(config.audit_log, clock)
    store = Store(config.database)
    keys = KeyRing(config.key_dir, store, config.key_algorithm, clock)
    holder = PolicyHolder(config.policy_path, audit)
    yield assemble(config, store, keys, holder, audit, clock)
    store.close()
    audit.close()


def by_provider(result: Explanation) -> dict[str, list[str]]:
    return {p.provider: p.identities for p in result.providers}


def minted(issuer: Issuer, user: str, workspace: str | None, pipeline: str | None) -> object:
    request = LaunchRequest(user=user, run="r1", workspace=workspace, pipeline=pipeline)
    return issuer.tokens.mint(request, caller="test").identities


@pytest.mark.parametrize(
    ("user", "workspace", "pipeline"),
    [("alice", None, None), ("alice", "genomics", None), ("bob", "genomics", "nf-core/rnaseq"),
     ("bob", None, "nf-core/rnaseq"), ("bob", "genomics", None)],
)  # fmt: skip
def test_explain_names_exactly_what_a_mint_gives(
    issuer: Issuer, user: str, workspace: str | None, pipeline: str | None
) -> None:
    result = explain(issuer.tokens, user, workspace, pipeline)
    assert result.refused is None
    assert {p: n for p, n in by_provider(result).items() if n} == minted(
        issuer, user, workspace, pipeline
    )


def test_alice_outside_a_workspace_gets_her_own_grants_and_hears_of_the_workspace_one(
    issuer: Issuer,
) -> None:
    result = explain(issuer.tokens, "alice")
    aws, gcp, azure, hpc = result.providers
    assert aws.identities == ["alice-data"] and aws.default == "alice-data"
    assert [(g.position, g.basis, g.grant) for g in aws.grants] == [(1, "the user's grant", 1)]
    assert gcp.identities == ["alice"]
    assert azure.identities == [] and azure.why_none is not None
    assert "no [[grants]] entry with provider = \"azure\" names user 'alice'" in azure.why_none
    assert hpc.identities == [] and hpc.why_none is not None
    assert "[[grants]] #5 applies in workspace genomics" in hpc.why_none


def test_a_workspace_grant_ranks_after_the_users_own(issuer: Issuer) -> None:
    aws = explain(issuer.tokens, "alice", "genomics").providers[0]
    assert aws.identities == ["alice-data", "shared-ro"] and aws.default == "alice-data"
    assert [(g.position, g.basis, g.grant, g.names) for g in aws.grants] == [
        (1, "the user's grant", 1, "users alice"),
        (2, "the workspace's grant", 2, "workspaces genomics"),
    ]


def test_a_pipeline_grant_ranks_first_and_is_the_default(issuer: Issuer) -> None:
    result = explain(issuer.tokens, "bob", "genomics", "nf-core/rnaseq")
    aws = result.providers[0]
    assert aws.identities == ["rnaseq", "shared-ro"] and aws.default == "rnaseq"
    assert aws.grants[0].basis == "the user's grant for this pipeline"
    assert aws.grants[0].pipelines == ["nf-core/rnaseq"]
    text = render(result)
    assert "aws    rnaseq (default), shared-ro" in text
    assert "1. [[grants]] #3, the user's grant for this pipeline" in text


def test_a_pipeline_grant_missed_by_another_pipeline_is_named(issuer: Issuer) -> None:
    result = explain(issuer.tokens, "bob", None, "nf-core/sarek")
    aws = result.providers[0]
    assert aws.identities == [] and aws.why_none is not None
    assert "[[grants]] #3 applies only to pipelines nf-core/rnaseq" in aws.why_none
    assert result.refused is not None and "has no identity granted" in result.refused


def test_a_granted_cluster_without_a_username_is_explained(issuer: Issuer) -> None:
    hpc = explain(issuer.tokens, "bob", "genomics").providers[3]
    assert hpc.identities == [] and hpc.unusable == ["cluster"]
    assert hpc.why_none is not None and "no Linux username" in hpc.why_none


def test_carol_without_grants_would_be_refused(issuer: Issuer) -> None:
    result = explain(issuer.tokens, "carol")
    assert result.refused is not None
    assert "user 'carol' has no identity granted" in result.refused
    assert all(p.identities == [] and p.why_none for p in result.providers)
    with pytest.raises(Forbidden, match="has no identity granted"):  # as the mint says
        minted(issuer, "carol", None, None)


def test_a_non_member_is_refused_in_the_workspace(issuer: Issuer) -> None:
    result = explain(issuer.tokens, "carol", "genomics")
    assert result.refused == (
        "user 'carol' is not a member of workspace 'genomics'; add them to its `members` in the "
        "identity policy"
    )


@pytest.mark.parametrize(
    ("user", "fragment"),
    [("dave", "is disabled in the identity policy; remove `disabled = true`"),
     ("mallory", "is not in the identity policy; add a [[users]] entry")],
)  # fmt: skip
def test_disabled_and_unknown_users_are_refused_with_the_fix(
    issuer: Issuer, user: str, fragment: str
) -> None:
    result = explain(issuer.tokens, user, "genomics" if user == "dave" else None)
    assert result.refused is not None and fragment in result.refused


def test_a_user_an_admin_disabled_is_refused_with_the_command_to_enable(issuer: Issuer) -> None:
    assert explain(issuer.tokens, "erin", "genomics").refused is None
    issuer.tokens.set_user_disabled("erin", True, "left the lab", caller="test")
    result = explain(issuer.tokens, "erin", "genomics")
    assert result.refused == (
        "user 'erin' was disabled by an administrator (left the lab); "
        "`credsidecar issuer enable-user erin` lets them launch again"
    )
    assert by_provider(result)["aws"] == ["shared-ro"]  # what enabling them would restore
    assert "(once that is fixed, the grants below apply)" in render(result)


def test_json_carries_the_same_explanation(issuer: Issuer) -> None:
    data = json.loads(json.dumps(explain(issuer.tokens, "alice", "genomics").to_json()))
    assert data["user"] == "alice" and data["refused"] is None
    aws = data["providers"][0]
    assert aws["provider"] == "aws" and aws["default"] == "alice-data"
    assert aws["grants"][1]["basis"] == "the workspace's grant"


def test_the_command_line_prints_text_and_json_and_exits_1_on_a_refusal(
    policy_config: Path,
) -> None:
    cli = [sys.executable, "-m", "credsidecar", "issuer", "explain", "--config",
           str(policy_config)]  # fmt: skip
    done = subprocess.run([*cli, "--user", "alice", "--workspace", "genomics"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "user alice, workspace genomics, any pipeline",
        "aws    alice-data (default), shared-ro",
    ]
    done = subprocess.run([*cli, "--user", "carol", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "has no identity granted" in json.loads(done.stdout)["refused"]
    # A grant naming an undefined identity stops the policy from loading: said with its line.
    policy = policy_config.parent / "policy.toml"
    policy.write_text(POLICY.replace('identities = ["shared-ro"]', 'identities = ["nope"]'))
    done = subprocess.run([*cli, "--user", "alice"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "grant names unknown aws identity 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
