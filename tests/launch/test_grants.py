"""The launch token's grants: what the issuer writes is what the sidecar reads, typed."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
import pytest

from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE, AZURE_AUDIENCE
from credsidecar.errors import BadRequest, ConfigError, InvalidGrant
from credsidecar.issuer.policy import parse_policy
from credsidecar.launch import read_claims
from credsidecar.launch.grants import (
    LINUX_USERNAME,
    PROVIDERS,
    ROLE_ARN,
    AwsGrant,
    AzureGrant,
    GcpGrant,
    Grants,
    HpcGrant,
    identity_urn,
    parse_identity_urn,
)

POLICY = """
[[users]]
id = "alice"

[identities.aws.data]
role_arn = "arn:aws:iam::123456789012:role/data"
session_policy = '{"Version": "2012-10-17"}'

[identities.aws.readonly]
role_arn = "arn:aws-us-gov:iam::123456789012:role/team/readonly"
audience = "my-audience"

[identities.gcp.lab]
audience = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/i"
service_account = "lab@proj.iam.gserviceaccount.com"
project_id = "proj"
project_number = "42"

[identities.gcp.bare]
audience = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/i"

[identities.azure.pipelines]
tenant_id = "11111111-2222-3333-4444-555555555555"
client_id = "66666666-7777-8888-9999-000000000000"
object_id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
resource_id = "/subscriptions/s/resourceGroups/g/providers/x/userAssignedIdentities/pipelines"

[identities.hpc.cluster]
host = "login.example.org"
port = 2222
scheduler = "pbs"
usernames = { alice = "alice01" }

[[grants]]
users = ["alice"]
provider = "aws"
identities = ["data", "readonly"]
default = "readonly"

[[grants]]
users = ["alice"]
provider = "gcp"
identities = ["lab", "bare"]

[[grants]]
users = ["alice"]
provider = "azure"
identities = ["pipelines"]

[[grants]]
users = ["alice"]
provider = "hpc"
identities = ["cluster"]
"""


def token_with(identities: object) -> str:
    claims = {"iss": "https://id.example", "sub": "alice", "user": "alice", "run": "r1",
              "identities": identities}  # fmt: skip
    return pyjwt.encode(claims, "k" * 32, algorithm="HS256")


def test_every_providers_grants_reach_the_sidecar_as_the_issuer_wrote_them() -> None:
    policy = parse_policy(POLICY)
    chosen = {p: policy.granted("alice", None, None, p) for p in PROVIDERS}
    # What the issuer's mint writes into the launch token...
    written = {p: [i.grant("alice").to_claim() for i in ids] for p, ids in chosen.items()}
    # ...is read back by the sidecar as the same typed grants, the default first.
    grants = read_claims(token_with(written)).grants
    for provider, identities in chosen.items():
        assert grants.of(provider) == tuple(i.grant("alice") for i in identities)
    assert grants.get(AwsGrant) == AwsGrant(
        "readonly", "arn:aws-us-gov:iam::123456789012:role/team/readonly", "my-audience"
    )
    assert grants.get(AwsGrant, "data") == AwsGrant(
        "data", "arn:aws:iam::123456789012:role/data", AWS_DEFAULT_AUDIENCE,
        '{"Version": "2012-10-17"}',
    )  # fmt: skip
    assert grants.names("gcp") == ["lab", "bare"]
    assert grants.get(GcpGrant, "bare") == GcpGrant("bare", chosen["gcp"][1].audience)
    azure = grants.get(AzureGrant)
    assert azure is not None and azure.audience == AZURE_AUDIENCE
    assert azure.object_id == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert grants.get(HpcGrant) == HpcGrant("cluster", "login.example.org", "alice01", "pbs", 2222)
    assert grants.to_claim() == written


def test_unset_optional_fields_stay_out_of_the_claim() -> None:
    bare = GcpGrant("bare", "//aud")
    assert bare.to_claim() == {"name": "bare", "audience": "//aud"}
    assert GcpGrant.from_claim(bare.to_claim()) == bare
    assert AwsGrant("a", "arn:aws:iam::123456789012:role/a").to_claim() == {
        "name": "a", "role_arn": "arn:aws:iam::123456789012:role/a",
        "audience": AWS_DEFAULT_AUDIENCE,
    }  # fmt: skip


def test_a_claim_without_audience_gets_the_clouds_default() -> None:
    aws = AwsGrant.from_claim({"name": "a", "role_arn": "arn:aws:iam::123456789012:role/a"})
    assert aws.audience == AWS_DEFAULT_AUDIENCE
    azure = AzureGrant.from_claim({"name": "z", "tenant_id": "t", "client_id": "c"})
    assert azure.audience == AZURE_AUDIENCE and azure.object_id is None


def test_fields_and_providers_of_a_newer_issuer_are_ignored() -> None:
    grants = Grants.from_claim(
        {"aws": [{"name": "a", "role_arn": "r", "colour": "blue"}], "oci": [{"x": 1}]}
    )
    assert grants == Grants(aws=(AwsGrant("a", "r"),))
    assert grants.of("oci") == () and grants.names("gcp") == []
    assert Grants.from_claim(None) == Grants()


def test_grants_pick_the_default_or_the_named_one() -> None:
    grants = Grants(aws=(AwsGrant("first", "r1"), AwsGrant("second", "r2")))
    assert grants.get(AwsGrant) == AwsGrant("first", "r1")
    assert grants.get(AwsGrant, "second") == AwsGrant("second", "r2")
    assert grants.get(AwsGrant, "third") is None
    assert grants.get(GcpGrant) is None


@pytest.mark.parametrize(
    ("identities", "fragment"),
    [
        (["aws"], "identities claim must map each provider to a list"),
        ({"aws": {"name": "a"}}, "identities.aws must be a list"),
        ({"gcp": ["lab"]}, r"identities.gcp\[0\] must be an object"),
        ({"aws": [{"name": "a"}]}, r"identities.aws\[0\].role_arn is missing"),
        ({"aws": [{"name": "a", "role_arn": 7}]}, r"identities.aws\[0\].role_arn must be a non-"),
        ({"aws": [{"name": "a", "role_arn": "r", "session_policy": {}}]},
         r"identities.aws\[0\].session_policy must be a string"),
        ({"gcp": [{"name": "g", "audience": ""}]}, r"identities.gcp\[0\].audience must be a non"),
        ({"azure": [{"name": "z", "tenant_id": "t"}]}, r"identities.azure\[0\].client_id is miss"),
        ({"hpc": [{"name": "c", "host": "h", "username": "u", "port": "22"}]},
         r"identities.hpc\[0\].port must be an integer"),
        ({"hpc": [{"name": "c", "host": "h", "username": "u", "port": True}]},
         r"identities.hpc\[0\].port must be an integer"),
        ({"hpc": [{"name": "c", "host": "h"}, {"name": "d"}]},
         r"identities.hpc\[0\].username is missing"),
    ],
)  # fmt: skip
def test_a_malformed_grant_is_refused_naming_the_field(identities: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        read_claims(token_with(identities))
    assert "mint a new launch token" in caught.value.message


def test_the_issuer_refuses_a_malformed_grant_as_a_bad_grant() -> None:
    with pytest.raises(InvalidGrant, match=r"identities.aws\[0\].name is missing"):
        Grants.from_claim({"aws": [{"role_arn": "r"}]}, error=InvalidGrant)


def test_identity_urn_round_trips() -> None:
    urn = identity_urn("azure", "genomics-pipelines")
    assert urn == "urn:credsidecar:identity:azure:genomics-pipelines"
    assert parse_identity_urn(urn) == ("azure", "genomics-pipelines")
    assert parse_identity_urn(identity_urn("aws", "a:b")) == ("aws", "a:b")


@pytest.mark.parametrize(
    "urn", ["urn:credsidecar:identity:aws", "urn:credsidecar:identity:aws:", "arn:aws:x", ""]
)
def test_anything_else_is_not_an_identity_urn(urn: str) -> None:
    with pytest.raises(BadRequest, match="must look like urn:credsidecar:identity:PROVIDER:NAME"):
        parse_identity_urn(urn)


@pytest.mark.parametrize(
    ("arn", "valid"),
    [
        ("arn:aws:iam::123456789012:role/data", True),
        ("arn:aws-cn:iam::123456789012:role/path/to/role+=,.@-_", True),
        ("arn:aws:iam::12345678901:role/short-account", False),
        ("arn:aws:iam::123456789012:user/alice", False),
        ("arn:aws:iam::123456789012:role/", False),
        ("arn:aws:iam::123456789012:role/" + "r" * 513, False),
        ("arn:aws:iam::123456789012:role/sp ace", False),
    ],
)
def test_role_arn_pattern(arn: str, valid: bool) -> None:
    match = ROLE_ARN.fullmatch(arn)
    assert bool(match) is valid
    if match:
        assert match.group("account") == "123456789012"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("alice01", True),
        ("_svc", True),
        ("a.b-c_d", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("Alice", False),
        ("1alice", False),
        ("-alice", False),
        ("al ice", False),
        ("", False),
    ],
)
def test_linux_username_pattern(name: str, valid: bool) -> None:
    assert bool(LINUX_USERNAME.fullmatch(name)) is valid
