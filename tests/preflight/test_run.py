"""Preflight's run: the default identity first, the launch's other identities where it fails,
credentials obtained once per identity."""

from __future__ import annotations

from credsidecar.preflight.model import Access, Outcome, Target
from credsidecar.preflight.run import Preflight
from tests.preflight.fakes import (
    ALICE_ROLE,
    WORKSPACE_ROLE,
    TableSource,
    role,
    table_check,
    target,
)


def _source(**kwargs: object) -> TableSource:
    identities = {"aws": [role(WORKSPACE_ROLE, "genomics-readonly", True),
                          role(ALICE_ROLE, "alice-data", False)]}  # fmt: skip
    return TableSource(identities, **kwargs)  # type: ignore[arg-type]


async def test_a_path_the_default_identity_reaches_is_not_tried_with_others() -> None:
    source = _source()
    check = table_check({WORKSPACE_ROLE: {"s3://shared-refs/"}})
    (finding,) = await Preflight(source, {"aws": check}).run([target("s3://shared-refs/")])
    assert finding.verdict.outcome is Outcome.OK
    assert finding.others_checked == ()
    assert source.obtained == [WORKSPACE_ROLE]


async def test_a_denied_path_names_the_other_granted_identity_that_would_work() -> None:
    check = table_check({ALICE_ROLE: {"s3://alice-data/"}})
    (finding,) = await Preflight(_source(), {"aws": check}).run([target("s3://alice-data/")])
    assert finding.verdict.outcome is Outcome.DENIED
    assert finding.verdict.identity == WORKSPACE_ROLE
    assert finding.verdict.alternatives == (ALICE_ROLE,)
    assert [i.name for i in finding.alternatives] == ["alice-data"]


async def test_a_path_no_identity_reaches_lists_the_identities_tried() -> None:
    (finding,) = await Preflight(_source(), {"aws": table_check({})}).run([target("s3://x/")])
    assert finding.verdict.alternatives == ()
    assert [i.name for i in finding.others_checked] == ["alice-data"]


async def test_credentials_are_obtained_once_per_identity_for_many_paths() -> None:
    source = _source()
    paths = [target(f"s3://bucket-{i}/") for i in range(10)]
    await Preflight(source, {"aws": table_check({})}).run(paths)
    assert sorted(source.obtained) == sorted([WORKSPACE_ROLE, ALICE_ROLE])


async def test_a_refused_credential_is_no_credentials_with_its_cause_and_tries_others() -> None:
    source = _source(refuse={WORKSPACE_ROLE: "the run 'r1' was revoked"})
    check = table_check({ALICE_ROLE: {"s3://alice-data/"}})
    (finding,) = await Preflight(source, {"aws": check}).run([target("s3://alice-data/")])
    assert finding.verdict.outcome is Outcome.NO_CREDENTIALS
    assert finding.verdict.detail == "the run 'r1' was revoked"
    assert finding.verdict.alternatives == (ALICE_ROLE,)


async def test_a_cloud_without_an_identity_is_no_credentials_saying_so() -> None:
    (finding,) = await Preflight(_source(), {}).run([target("gs://b/", "gcp")])
    assert finding.verdict.outcome is Outcome.NO_CREDENTIALS
    assert "grants no GCP identity" in finding.verdict.detail


async def test_findings_keep_the_order_of_the_targets() -> None:
    paths = [target(f"s3://bucket-{i}/") for i in range(5)]
    findings = await Preflight(_source(), {"aws": table_check({})}).run(paths)
    assert [f.verdict.target.uri for f in findings] == [t.uri for t in paths]


async def test_an_hpc_path_without_the_launch_token_says_how_to_give_it() -> None:
    hpc = Target("ssh://hpc1/work", "hpc", "hpc1", None, "/work", frozenset({Access.READ}))
    (finding,) = await Preflight(_source(), {}).run([hpc])
    assert finding.verdict.outcome is Outcome.NO_CREDENTIALS
    assert "$CREDSIDECAR_TOKEN_FILE" in finding.verdict.detail


async def test_the_default_identity_is_not_tried_again_as_an_other() -> None:
    """In a job the sidecar lists every granted Azure identity, the one it serves included."""
    workspace, alice = role(WORKSPACE_ROLE, "genomics-readonly", True), role(ALICE_ROLE, "a", False)
    again = role(WORKSPACE_ROLE, "genomics-readonly", False)
    source = TableSource({"aws": [workspace, again, alice]})
    (finding,) = await Preflight(source, {"aws": table_check({})}).run([target("s3://x/")])
    assert [i.label for i in finding.others_checked] == [ALICE_ROLE]
