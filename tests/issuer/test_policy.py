"""Policy parsing, error locations and grant resolution."""

from __future__ import annotations

import pytest

from credsidecar.errors import ConfigError, Forbidden
from credsidecar.issuer.example import EXAMPLE_POLICY
from credsidecar.issuer.policy import parse_policy
from credsidecar.issuer.status import status_rows, status_table

BASE = """\
[[users]]
id = "alice"

[[users]]
id = "bob"

[[workspaces]]
id = "lab"
members = ["alice", "bob"]

[identities.aws.a]
role_arn = "arn:aws:iam::111122223333:role/a"

[identities.aws.b]
role_arn = "arn:aws:iam::111122223333:role/b"

[identities.aws.lab]
role_arn = "arn:aws:iam::111122223333:role/lab"
"""


def names(identities: list[object]) -> list[str]:
    return [getattr(i, "name") for i in identities]  # noqa: B009


def test_example_policy_parses() -> None:
    policy = parse_policy(EXAMPLE_POLICY)
    assert set(policy.users) == {"alice", "bob", "carol"}
    assert policy.identities["gcp"]["alice"].audience.startswith("//iam.googleapis.com/projects/")


def test_user_grant_outranks_workspace_grant_for_the_default() -> None:
    policy = parse_policy(
        BASE
        + """
[[grants]]
workspaces = ["lab"]
provider = "aws"
identities = ["lab"]

[[grants]]
users = ["alice"]
provider = "aws"
identities = ["a"]
"""
    )
    assert names(policy.granted("alice", "lab", None, "aws")) == ["a", "lab"]
    assert names(policy.granted("bob", "lab", None, "aws")) == ["lab"]
    # Outside the workspace only the user's own grant applies.
    assert names(policy.granted("bob", None, None, "aws")) == []


def test_pipeline_specific_grant_selects_its_default() -> None:
    policy = parse_policy(
        BASE
        + """
[[grants]]
users = ["alice"]
provider = "aws"
identities = ["a"]

[[grants]]
users = ["alice"]
provider = "aws"
identities = ["b"]
pipelines = ["nf-core/sarek"]
"""
    )
    assert names(policy.granted("alice", None, "nf-core/sarek", "aws")) == ["b", "a"]
    assert names(policy.granted("alice", None, "other", "aws")) == ["a"]


def test_explicit_default_is_honoured() -> None:
    policy = parse_policy(
        BASE + '\n[[grants]]\nusers = ["bob"]\nprovider = "aws"\nidentities = ["a", "b"]\n'
        'default = "b"\n'
    )
    assert names(policy.granted("bob", None, None, "aws")) == ["b", "a"]


def test_hpc_cluster_needs_a_username_for_the_user() -> None:
    policy = parse_policy(
        BASE
        + """
[identities.hpc.c1]
host = "login.example.org"
usernames = { alice = "alice01" }

[[grants]]
workspaces = ["lab"]
provider = "hpc"
identities = ["c1"]
"""
    )
    assert names(policy.granted("alice", "lab", None, "hpc")) == ["c1"]
    assert names(policy.granted("bob", "lab", None, "hpc")) == []
    claim = policy.identities["hpc"]["c1"].grant("alice").to_claim()
    assert claim == {
        "name": "c1", "scheduler": "slurm", "host": "login.example.org", "port": 22,
        "username": "alice01",
    }  # fmt: skip
    # A user the cluster has no account for gets no grant, rather than one without a username.
    with pytest.raises(Forbidden, match="'bob' has no Linux username on HPC cluster 'c1'"):
        policy.identities["hpc"]["c1"].grant("bob")


def test_membership_is_checked() -> None:
    policy = parse_policy(BASE + '\n[[users]]\nid = "eve"\n')
    policy.check_membership("alice", "lab")
    with pytest.raises(Forbidden, match="'eve' is not a member of workspace 'lab'"):
        policy.check_membership("eve", "lab")


@pytest.mark.parametrize(
    ("extra", "line", "fragment"),
    [
        # BASE is 18 lines and a blank line follows it, so `extra` starts on line 20.
        ('[[grants]]\nusers = ["alice"]\nprovider = "aws"\nidentities = ["zzz"]\n', 23,
         "unknown aws identity 'zzz'"),
        ('[[grants]]\nusers = ["nobody"]\nprovider = "aws"\nidentities = ["a"]\n', 21,
         "unknown user 'nobody'"),
        ('[identities.aws.bad]\nrole_arn = "arn:aws:iam::1:role/x"\n', 21, "role_arn"),
        ('[identities.aws.bad]\nrole_arn = "arn:aws:iam::111122223333:role/x"\ncolour = "red"\n',
         22, "colour"),
        ('[identities.hpc.h]\nhost = "h"\nscheduler = "kubernetes"\n', 22, "scheduler"),
        ('[identities.azure.z]\ntenant_id = "t.example.org"\nclient_id = "nope"\n', 22,
         "client_id"),
        ("[[users]]\nid = 'alice'\n", 21, "defined twice"),
        ('[[grants]]\nusers = ["alice"]\nprovider = "aws"\nidentities = ["a"]\ndefault = "b"\n',
         24, "default 'b'"),
        ("this is not toml\n", 20, "Expected"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_reason(extra: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(BASE + "\n" + extra, "policy.toml")
    message = info.value.message
    assert message.startswith(f"policy.toml:{line}:"), message
    assert fragment in message


def test_status_marks_missing_and_disabled_users() -> None:
    policy = parse_policy(EXAMPLE_POLICY + '\n[[users]]\nid = "dan"\ndisabled = true\n')
    rows = {row["user"]: row for row in status_rows(policy)}
    assert rows["alice"] == {
        "user": "alice", "aws": "alice-data (+2)", "gcp": "alice (+1)",
        "azure": "alice (+2)", "hpc": "sandbox-cluster",
    }  # fmt: skip
    assert rows["bob"]["gcp"] == "bob" and rows["bob"]["azure"] == "bob (+1)"
    assert set(rows["carol"].values()) == {"carol", "missing"}
    assert set(rows["dan"].values()) == {"dan", "disabled"}
    table = status_table(policy)
    assert table.splitlines()[0].split() == ["USER", "AWS", "GCP", "AZURE", "HPC"]
    assert table.splitlines()[-1] == "4 users, 4 user/provider pairs without a usable identity"
