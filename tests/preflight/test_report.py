"""The report: the table, one sentence per failure that says what to do, JSON, exit status."""

from __future__ import annotations

import json

from credsidecar.preflight.credentials import CloudIdentity
from credsidecar.preflight.model import Access, Outcome, Target, Verdict
from credsidecar.preflight.report import exit_code, render_json, render_text, sentence
from credsidecar.preflight.run import Finding, Report
from tests.preflight.fakes import ALICE_ROLE, WORKSPACE_ROLE, WRITE, role, target

AZURE_A1 = "00000000-0000-4000-8000-0000000000a1"
SA = "alice@sandbox-project.iam.gserviceaccount.com"


def report(*findings: Finding, user: str | None = "alice", job: bool = False) -> Report:
    return Report("before launch", user, "r1" if user else None, findings, job=job)


def denied(uri: str, missing: str, cloud: str = "aws", identity: str = ALICE_ROLE,
           access: frozenset[Access] = WRITE) -> Verdict:  # fmt: skip
    return Verdict(target(uri, cloud, access), Outcome.DENIED, identity, (missing,), "refused")


def test_a_denied_write_names_user_identity_resource_permission_and_who_to_ask() -> None:
    workspace = role(WORKSPACE_ROLE, "genomics-readonly", False)
    finding = Finding(denied("s3://shared-refs/out/", "s3:PutObject"), others_checked=(workspace,))
    text = sentence(finding, report(finding))
    assert text == (
        f"User alice (run r1) cannot write s3://shared-refs/out/ as role {ALICE_ROLE}: it lacks "
        "s3:PutObject on arn:aws:s3:::shared-refs/out/*; no other AWS identity granted to this "
        "launch would work either (genomics-readonly); ask your AWS administrator to grant "
        "s3:PutObject on arn:aws:s3:::shared-refs/out/* to role alice-data."
    )


def test_a_denied_listing_names_the_bucket_and_the_prefix() -> None:
    finding = Finding(denied("s3://bob-data/in/", "s3:ListBucket", access=frozenset({Access.READ})))
    text = sentence(finding, report(finding)) or ""
    assert "cannot read s3://bob-data/in/" in text
    assert "s3:ListBucket on arn:aws:s3:::bob-data (prefix in/)" in text
    assert "no other AWS identity is granted to this launch" in text


def test_a_denied_path_says_which_other_identity_would_work_and_how_to_select_it() -> None:
    other = role(ALICE_ROLE, "alice-data", False)
    verdict = denied("s3://alice-data/", "s3:ListBucket", identity=WORKSPACE_ROLE)
    finding = Finding(verdict, alternatives=(other,), others_checked=(other,))
    text = sentence(finding, report(finding)) or ""
    assert (
        f"AWS identity alice-data ({ALICE_ROLE}), also granted to this launch, would work: " in text
    )
    assert "select alice-data; otherwise ask your AWS administrator" in text
    assert text.endswith("to role genomics-readonly.")


def test_gcp_and_azure_sentences_use_their_own_permission_names_and_roles() -> None:
    gcp = Finding(denied("gs://shared-refs/x", "storage.objects.create", "gcp", SA))
    assert "it lacks storage.objects.create on bucket shared-refs" in (
        sentence(gcp, report(gcp)) or "")  # fmt: skip
    write = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write"
    blob = Target("az://sandbox/shared-refs/x", "azure", "sandbox", "shared-refs", "x", WRITE)
    identity = CloudIdentity("azure", AZURE_A1, "genomics-pipelines")
    azure = Finding(Verdict(blob, Outcome.DENIED, AZURE_A1, (write,)), identity=identity)
    text = sentence(azure, report(azure)) or ""
    assert f"as managed identity genomics-pipelines (client id {AZURE_A1})" in text
    assert f"it lacks {write} on container shared-refs of storage account sandbox" in text
    assert "assign Storage Blob Data Contributor" in text


def test_not_found_unreachable_and_no_credentials_read_differently() -> None:
    t = target("gs://no-such-bucket", "gcp")
    missing = Finding(Verdict(t, Outcome.NOT_FOUND, SA, detail="HTTP 404"))
    down = Finding(Verdict(t, Outcome.UNREACHABLE, SA, detail="connection refused"))
    cause = "the sidecar answered HTTP 403: user alice (run r1) may not ...: the run was revoked"
    none = Finding(Verdict(t, Outcome.NO_CREDENTIALS, SA, detail=cause))
    r = report(missing, down, none)
    assert "Cloud Storage bucket no-such-bucket does not exist" in (sentence(missing, r) or "")
    assert "could not be checked" in (sentence(down, r) or "")
    assert "(connection refused); check the endpoint" in (sentence(down, r) or "")
    assert f"got no GCP credentials as service account {SA} ({cause})." in (
        sentence(none, r) or "")  # fmt: skip


def test_in_the_job_without_a_user_the_sentence_says_this_job() -> None:
    finding = Finding(denied("s3://bob-data/", "s3:ListBucket"))
    text = render_text(report(finding, user=None, job=True))
    assert "- This job cannot read s3://bob-data/" in text
    assert "run preflight before launch (--token-file)" in text  # other identities: not here


def test_the_table_has_path_access_verdict_identity() -> None:
    ok = Finding(Verdict(target("s3://alice-data/work/", access=frozenset(Access)), Outcome.OK,
                         ALICE_ROLE, unverified=(Access.WRITE, Access.DELETE)))  # fmt: skip
    lines = render_text(report(ok)).splitlines()
    assert lines[2].split() == ["PATH", "ACCESS", "VERDICT", "IDENTITY"]
    assert lines[3].split() == ["s3://alice-data/work/", "read+write+delete", "ok",
                                "(write+delete", "not", "verified)", ALICE_ROLE]  # fmt: skip
    assert "paths failed" not in "\n".join(lines)


def test_exit_status_is_0_ok_1_denied_or_missing_2_could_not_check() -> None:
    t = target("s3://b/")
    ok = Finding(Verdict(t, Outcome.OK, ALICE_ROLE))
    unverified = Finding(Verdict(t, Outcome.OK, ALICE_ROLE, unverified=(Access.WRITE,)))
    no = Finding(denied("s3://b/", "s3:PutObject"))
    gone = Finding(Verdict(t, Outcome.NOT_FOUND, ALICE_ROLE))
    down = Finding(Verdict(t, Outcome.UNREACHABLE, ALICE_ROLE))
    creds = Finding(Verdict(t, Outcome.NO_CREDENTIALS, ALICE_ROLE))
    assert exit_code(report(ok, unverified)) == 0
    assert exit_code(report(ok, no)) == 1
    assert exit_code(report(ok, gone)) == 1
    assert exit_code(report(ok, down)) == 2
    assert exit_code(report(ok, creds)) == 2
    assert exit_code(report(down, no)) == 1  # a definite refusal outweighs an unknown


def test_json_carries_the_same_data_and_the_sentences() -> None:
    other = role(ALICE_ROLE, "alice-data", False)
    verdict = denied("s3://alice-data/", "s3:ListBucket", identity=WORKSPACE_ROLE)
    finding = Finding(verdict, alternatives=(other,), others_checked=(other,))
    body = json.loads(render_json(report(finding)))
    assert body["user"] == "alice" and body["exit_code"] == 1
    assert body["summary"] == {"denied": 1}
    (path,) = body["paths"]
    assert path["path"] == "s3://alice-data/" and path["access"] == ["write"]
    assert path["verdict"] == "denied" and path["missing"] == ["s3:ListBucket"]
    assert path["identity"] == WORKSPACE_ROLE
    assert path["alternatives"] == [
        {"identity": ALICE_ROLE, "name": "alice-data", "select": "select alice-data"}
    ]
    assert path["message"] == sentence(finding, report(finding))


def test_a_cluster_work_dir_without_group_settings_is_reported_as_not_writable() -> None:
    """setgid or a default ACL missing is what writing results for the group needs, not
    reading: the sentence says 'cannot write', and 'cannot read' only for read permission."""
    work = frozenset({Access.READ, Access.WRITE, Access.DELETE})
    shared = Finding(denied("ssh://sandbox-cluster/tmp", "setgid", "hpc", "alice@sandbox-cluster",
                            access=work))  # fmt: skip
    assert "cannot write ssh://sandbox-cluster/tmp as alice@sandbox-cluster" in (
        sentence(shared, report(shared)) or ""
    )
    unreadable = Finding(denied("ssh://sandbox-cluster/x", "read permission", "hpc",
                                "alice@sandbox-cluster", access=work))  # fmt: skip
    assert "cannot read ssh://sandbox-cluster/x" in (sentence(unreadable, report(unreadable)) or "")
