"""`credsidecar smoke` against the real sidecar, in the job environment `credsidecar env` prints:
every endpoint of every cloud passes for alice, and each check names her identity."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from credsidecar.sandbox.seed import AZURE_IDENTITIES, GCP_PROJECT_ID
from tests.support.jobenv import base_env
from tests.support.processes import CLI
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client

ALICE_SA = f"alice@{GCP_PROJECT_ID}.iam.gserviceaccount.com"
ALICE_AZURE = next(i for i in AZURE_IDENTITIES if i.name == "alice")


@pytest.fixture(scope="module")
def alice(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    issuer, sandbox = stack
    token = issuer.mint("alice", f"smoke-{os.getpid()}")["token"]
    sidecar = SidecarProcess(
        tmp_path_factory.mktemp("smoke"), token, sandbox, cloud="aws,gcp,azure"
    )
    try:
        yield sidecar
    finally:
        sidecar.stop()


def test_every_endpoint_passes_for_alice_and_names_her_identities(alice: SidecarProcess) -> None:
    done = run_client([*CLI, "smoke", "--json"], alice.env, timeout=60)
    report = json.loads(done.stdout)
    results = {c["check"]: c for c in report["checks"]}
    assert done.returncode == 0, (done.stderr, report)
    assert report["ok"] is True
    assert {c["result"] for c in report["checks"]} == {"ok"}
    assert set(results) >= {"aws.container", "aws.imds.role", "aws.imds.extended", "gcp.token",
                            "gcp.id_token", "azure.app_service", "azure.imds"}  # fmt: skip
    assert results["aws.imds.role"]["identity"].startswith("role alice-data, key ")
    assert "account " in results["aws.container"]["identity"]
    assert results["gcp.account"]["identity"] == ALICE_SA
    assert results["gcp.id_token"]["identity"].startswith(ALICE_SA)
    assert results["azure.app_service"]["identity"].startswith(f"client {ALICE_AZURE.client_id}")
    # Lifetimes as served: the sandbox's defaults are an hour.
    assert results["aws.container"]["remaining_seconds"] > 20 * 60
    assert results["gcp.token"]["remaining_seconds"] > 10 * 60
    # Nothing secret is printed.
    for name in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "IDENTITY_HEADER"):
        assert alice.env[name] not in done.stdout


def test_run_dir_checks_the_same_environment_from_outside_the_job(alice: SidecarProcess) -> None:
    """As a probe in the sidecar's container: no job variables, only its run directory."""
    done = run_client([*CLI, "smoke", "--run-dir", str(alice.run_dir)], base_env(), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke: all OK" in done.stdout
    assert ALICE_SA in done.stdout


def test_secret_only_checks_the_secret_endpoints_and_the_external_account_file(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    issuer, sandbox = stack
    token = issuer.mint("alice", f"smoke-secret-only-{os.getpid()}")["token"]
    sidecar = SidecarProcess(tmp_path_factory.mktemp("smoke-secret-only"), token, sandbox,
                             "--secret-only", cloud="aws,gcp,azure")  # fmt: skip
    try:
        done = run_client([*CLI, "smoke", "--json"], sidecar.env, timeout=60)
    finally:
        sidecar.stop()
    results = {c["check"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 0, results
    assert results["gcp.external_account"]["result"] == "ok"
    assert results["gcp.external_account"]["identity"].startswith(ALICE_SA)
    for unserved in ("aws.imds", "gcp.metadata", "azure.imds"):
        assert results[unserved]["result"] == "not configured"
