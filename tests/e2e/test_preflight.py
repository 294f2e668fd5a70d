"""`credsidecar preflight` as a subprocess against the real issuer, sandbox and sidecar.

Before launch (`--token-file`): the launch token is exchanged in the preflight process exactly
as the sidecar would, against the issuer and the sandbox's STS / Google STS + IAM Credentials /
Entra, then each path is checked in the sandbox storage, which enforces alice's and bob's grants.
Inside the job: only the environment `credsidecar env` printed (plus the Blob account URL,
which no variable carries). Each invocation checks many paths: subprocesses are few.

Seed (sandbox/seed.py): alice and bob each own `<user>-data` and read `shared-refs`; the
workspace identities `genomics-readonly` (AWS) and `genomics-pipelines` (Azure) read only
`shared-refs`. In the sandbox moto checks IAM before the bucket exists, so a missing bucket
is "not found" only on GCP and Azure (preflight/aws.py says why).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobenv import base_env
from tests.support.processes import CLI, wait_for
from tests.support.stack import (
    IssuerProcess,
    SandboxProcess,
    SidecarProcess,
    preflight_flags,
    run_client,
)
from tests.support.timing import scaled

Stack = tuple[IssuerProcess, SandboxProcess]
WRITE = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write"
READ = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
ROLE = "arn:aws:iam::123456789012:role/"
A1, A2 = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"
# A launch whose defaults are the workspace's identities, with alice's own also granted.
WORKSPACE_FIRST = {"aws": ["genomics-readonly", "alice-data"],
                   "azure": ["genomics-pipelines", "alice"]}  # fmt: skip

_runs = iter(range(1_000_000))


def new_run(kind: str) -> str:
    return f"preflight-{kind}-{os.getpid()}-{next(_runs)}"


def storage_flags(sandbox: SandboxProcess) -> list[str]:
    """Where the sandbox's storage APIs are (the Blob account URL has no variable)."""
    return ["--azure-blob-url", sandbox.info["azure"]["blob_url"]]


def before_launch_flags(sandbox: SandboxProcess) -> list[str]:
    """The issuer-side settings a platform gives preflight: the sandbox's token services, its
    storage endpoints and its CA."""
    return preflight_flags(sandbox.info)


def before_launch(
    stack: Stack, directory: Path, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "launch-token"
    token_file.write_text(token)
    flags = before_launch_flags(stack[1])
    return run_client([*CLI, "preflight", *args, "--token-file", str(token_file), *flags],
                      base_env())  # fmt: skip


def in_job(sidecar: SidecarProcess, sandbox: SandboxProcess, *args: str
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return run_client([*CLI, "preflight", *args, *storage_flags(sandbox)], sidecar.env)


def by_path(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.stdout, done.stderr
    return {p["path"]: p for p in json.loads(done.stdout)["paths"]}


@pytest.fixture(scope="module")
def workspace_sidecar(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A job of alice's launched with the workspace identities first, serving every cloud."""
    issuer, sandbox = stack
    token = issuer.mint("alice", new_run("job"), identities=WORKSPACE_FIRST)["token"]
    sidecar = SidecarProcess(tmp_path_factory.mktemp("job"), token, sandbox,
                             cloud="aws,gcp,azure")  # fmt: skip
    try:
        yield sidecar
    finally:
        sidecar.stop()


def test_before_launch_alice_each_cloud_allowed_denied_missing_and_read_only(
    stack: Stack, tmp_path: Path
) -> None:
    token = stack[0].mint("alice", new_run("alice"))["token"]
    done = before_launch(
        stack, tmp_path, token, "--json",
        "s3://alice-data/", "s3://bob-data/", "gs://alice-data/", "gs://bob-data/",
        "az://sandbox/alice-data/", "az://sandbox/bob-data/", "gs://no-such-bucket/in/",
        "az://sandbox/no-such-container/",
        "--write", "s3://shared-refs/out/", "--write", "gs://shared-refs/out/",
        "--write", "az://sandbox/shared-refs/out/",
        "--work-dir", "s3://alice-data/work/",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["user"] == "alice" and body["exit_code"] == 1
    paths = by_path(done)
    verdicts = {path: p["verdict"] for path, p in paths.items()}
    assert verdicts == {
        "s3://alice-data/": "ok", "s3://bob-data/": "denied",
        "gs://alice-data/": "ok", "gs://bob-data/": "denied",
        "az://sandbox/alice-data/": "ok", "az://sandbox/bob-data/": "denied",
        "gs://no-such-bucket/in/": "not found", "az://sandbox/no-such-container/": "not found",
        "s3://shared-refs/out/": "denied", "gs://shared-refs/out/": "denied",
        "az://sandbox/shared-refs/out/": "denied", "s3://alice-data/work/": "ok",
    }  # fmt: skip
    s3_write = paths["s3://shared-refs/out/"]
    assert s3_write["identity"] == ROLE + "alice-data"
    assert s3_write["missing"] == ["s3:PutObject"]
    assert s3_write["message"] == (
        f"User alice (run {body['run']}) cannot write s3://shared-refs/out/ as role "
        f"{ROLE}alice-data: it lacks s3:PutObject on arn:aws:s3:::shared-refs/out/*; no other "
        "AWS identity granted to this launch would work either (genomics-readonly); ask your "
        "AWS administrator to grant s3:PutObject on arn:aws:s3:::shared-refs/out/* to role "
        "alice-data."
    )
    assert paths["gs://shared-refs/out/"]["missing"] == ["storage.objects.create"]
    assert paths["az://sandbox/shared-refs/out/"]["missing"] == [WRITE]
    assert paths["az://sandbox/bob-data/"]["identity"] == A2
    assert "storage.objects.list" in paths["gs://bob-data/"]["missing"]
    assert "does not exist" in paths["gs://no-such-bucket/in/"]["message"]


def test_before_launch_bob_is_allowed_his_bucket_and_denied_alices(
    stack: Stack, tmp_path: Path
) -> None:
    token = stack[0].mint("bob", new_run("bob"))["token"]
    done = before_launch(
        stack, tmp_path, token, "s3://alice-data/", "gs://alice-data/", "az://sandbox/alice-data/",
        "--work-dir", "s3://bob-data/work/", "--work-dir", "gs://bob-data/work/",
        "--work-dir", "az://sandbox/bob-data/work/",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[3:9]}
    assert rows["s3://bob-data/work/"][:2] == ["read+write+delete", "ok"]
    assert rows["az://sandbox/bob-data/work/"][:2] == ["read+write+delete", "ok"]
    assert rows["s3://alice-data/"] == ["read", "denied", ROLE + "bob-data"]
    assert "bob@sandbox-project.iam.gserviceaccount.com" in rows["gs://alice-data/"]
    assert "3 of 6 paths failed:" in done.stdout
    assert "- User bob (run " in done.stdout
    assert "cannot read gs://alice-data/ as service account bob@" in done.stdout


def test_before_launch_names_the_other_granted_identity_that_would_work(
    stack: Stack, tmp_path: Path
) -> None:
    token = stack[0].mint("alice", new_run("ws"), identities=WORKSPACE_FIRST)["token"]
    done = before_launch(stack, tmp_path, token, "--json", "s3://alice-data/",
                         "az://sandbox/alice-data/", "s3://shared-refs/refs/")  # fmt: skip
    assert done.returncode == 1, done.stderr
    paths = by_path(done)
    s3 = paths["s3://alice-data/"]
    assert s3["identity"] == ROLE + "genomics-readonly"
    assert [a["name"] for a in s3["alternatives"]] == ["alice-data"]
    assert (
        f"AWS identity alice-data ({ROLE}alice-data), also granted to this launch, would work: "
        """launch with `"identities": {"aws": ["alice-data"]}` in the launch request, or start """
        "the sidecar with `--aws-identity alice-data`; otherwise ask your AWS administrator"
    ) in s3["message"]
    blob = paths["az://sandbox/alice-data/"]
    assert (blob["identity"], blob["missing"]) == (A1, [READ])
    assert [a["identity"] for a in blob["alternatives"]] == [A2]
    assert paths["s3://shared-refs/refs/"]["verdict"] == "ok"


def test_before_launch_paths_from_a_file_and_a_samplesheet_all_fine_exit_0(
    stack: Stack, tmp_path: Path
) -> None:
    paths_file = tmp_path / "paths.txt"
    paths_file.write_text("# the run's outputs\nwork-dir s3://alice-data/work/\n"
                          "write az://sandbox/alice-data/out/\n")  # fmt: skip
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,fastq_1,fastq_2\n"
                     "s1,gs://shared-refs/refs/genome.fa,s3://shared-refs/refs/genome.fa\n"
                     "s2,az://sandbox/shared-refs/refs/genome.fa,\n")  # fmt: skip
    token = stack[0].mint("alice", new_run("ok"))["token"]
    done = before_launch(stack, tmp_path, token, "--paths-from", str(paths_file),
                         "--samplesheet", str(sheet))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.splitlines()[3:]
    assert len(table) == 5 and all(line.split()[2] == "ok" for line in table), done.stdout
    assert "failed" not in done.stdout


def test_before_launch_a_revoked_run_could_not_be_checked_exit_2_with_the_cause(
    stack: Stack, tmp_path: Path
) -> None:
    issuer = stack[0]
    run = new_run("revoked")
    token = issuer.mint("alice", run)["token"]
    assert issuer.post(f"/v1/runs/{run}/revoke", {"reason": "preflight test"})[0] == 200
    done = before_launch(stack, tmp_path, token, "--json", "s3://alice-data/",
                         "gs://alice-data/", "az://sandbox/alice-data/")  # fmt: skip
    assert done.returncode == 2, done.stderr
    for path in by_path(done).values():
        assert path["verdict"] == "credentials unavailable"
        assert run in path["detail"] and "revoked" in path["detail"]
        assert path["message"].startswith(f"{path['path']} could not be checked: user alice")


def test_in_the_job_checks_through_the_sidecar_with_its_other_azure_identities(
    stack: Stack, workspace_sidecar: SidecarProcess
) -> None:
    done = in_job(
        workspace_sidecar, stack[1], "--json",
        "s3://shared-refs/refs/", "s3://alice-data/", "gs://alice-data/", "gs://bob-data/",
        "az://sandbox/shared-refs/", "az://sandbox/alice-data/", "az://sandbox/nope/",
        "--write", "az://sandbox/shared-refs/out/",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["user"] is None and "in the job, through the sidecar" in body["where"]
    paths = by_path(done)
    assert {p: v["verdict"] for p, v in paths.items()} == {
        "s3://shared-refs/refs/": "ok", "s3://alice-data/": "denied",
        "gs://alice-data/": "ok", "gs://bob-data/": "denied",
        "az://sandbox/shared-refs/": "ok", "az://sandbox/alice-data/": "denied",
        "az://sandbox/nope/": "not found", "az://sandbox/shared-refs/out/": "denied",
    }  # fmt: skip
    # The role's ARN from the IMDS role name and the container endpoint's AccountId.
    assert paths["s3://alice-data/"]["identity"] == ROLE + "genomics-readonly"
    assert paths["gs://alice-data/"]["identity"] == "alice@sandbox-project.iam.gserviceaccount.com"
    blob = paths["az://sandbox/alice-data/"]
    assert blob["identity"] == A1
    assert [(a["name"], a["identity"]) for a in blob["alternatives"]] == [("alice", A2)]
    assert f"would work: ask for client_id={A2}" in blob["message"]
    assert blob["message"].startswith("This job cannot read az://sandbox/alice-data/")
    assert paths["az://sandbox/shared-refs/out/"]["missing"] == [WRITE]


def test_in_the_job_the_sidecars_refusal_is_credentials_unavailable_with_its_cause(
    stack: Stack, tmp_path: Path
) -> None:
    issuer, sandbox = stack
    run = new_run("job-revoked")
    sidecar = SidecarProcess(tmp_path / "sidecar", issuer.mint("alice", run)["token"], sandbox,
                             "--aws-duration", "5")  # fmt: skip
    try:
        assert issuer.post(f"/v1/runs/{run}/revoke", {"reason": "preflight test"})[0] == 200
        request = urllib.request.Request(
            sidecar.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
            headers={"Authorization": sidecar.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
        )

        def refused() -> bool:
            try:
                urllib.request.urlopen(request, timeout=scaled(2)).close()
            except urllib.error.HTTPError as exc:
                return exc.code == 403
            return False

        wait_for(refused, "the sidecar to refuse after expiry", sidecar.proc, timeout=30)
        done = in_job(sidecar, sandbox, "s3://alice-data/")
    finally:
        sidecar.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "credentials unavailable" in done.stdout
    assert (
        "- s3://alice-data/ could not be checked: this job got no AWS credentials as the job's "
        "AWS role (the sidecar answered HTTP 403 for AWS credentials: "
    ) in done.stdout
    assert f"user alice (run {run})" in done.stdout
    assert "revoked" in done.stdout
