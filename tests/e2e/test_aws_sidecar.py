"""The real sidecar (`credsidecar serve`) with unmodified boto3 and aws CLI processes.

The issuer, the sandbox and each sidecar are separate processes; clients get only the
environment `credsidecar env` prints, applied to a bare PATH/HOME environment.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import (
    CLI,
    IssuerProcess,
    SandboxProcess,
    SidecarProcess,
    apply_shell_env,
    run_client,
    start,
    stop_process,
    wait_for,
)

BOTO3_CLIENT = [sys.executable, str(Path(__file__).parent / "clients" / "boto3_s3.py")]
AWS = str(Path(sys.executable).parent / "aws")


@pytest.fixture
def issuer(stack: tuple[IssuerProcess, SandboxProcess]) -> IssuerProcess:
    return stack[0]


@pytest.fixture
def sandbox(stack: tuple[IssuerProcess, SandboxProcess]) -> SandboxProcess:
    return stack[1]


_runs = iter(range(1_000_000))


def new_run() -> str:
    return f"e2e-{os.getpid()}-{next(_runs)}"


@pytest.fixture
def alice(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> Iterator[SidecarProcess]:
    sidecar = SidecarProcess(tmp_path / "alice", issuer.mint("alice", new_run())["token"], sandbox)
    yield sidecar
    sidecar.stop()


def loop_client(seconds: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BOTO3_CLIENT, "loop", str(seconds)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def container_only(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_EC2_METADATA")}


def imds_only(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_CONTAINER")}


# access per user ------------------------------------------------------------------------------


def test_boto3_acts_as_alice_through_the_container_endpoint(alice: SidecarProcess) -> None:
    done = run_client([*BOTO3_CLIENT, "alice"], container_only(alice.env))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["provider"] == "container-role"
    assert result["caller"].startswith("arn:aws:sts::123456789012:assumed-role/alice-data/alice@")
    assert result["write_own"] == "ok"
    assert result["read_shared"].startswith(">chr1")
    assert result["list_other"] == "AccessDenied"
    assert result["write_shared"] == "AccessDenied"


def test_boto3_acts_as_alice_through_imdsv2(alice: SidecarProcess) -> None:
    done = run_client([*BOTO3_CLIENT, "alice"], imds_only(alice.env))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["provider"] == "iam-role"
    assert "assumed-role/alice-data/alice@" in result["caller"]
    assert (result["write_own"], result["list_other"]) == ("ok", "AccessDenied")
    served = alice.audit_events("credentials.served")
    assert any("security-credentials" in e["path"] for e in served)


@pytest.mark.parametrize("path", ["container", "imds"])
def test_aws_cli_names_alices_role_session_and_is_refused_bobs_bucket(
    alice: SidecarProcess, path: str
) -> None:
    env = container_only(alice.env) if path == "container" else imds_only(alice.env)
    who = run_client([AWS, "sts", "get-caller-identity", "--output", "json"], env)
    assert who.returncode == 0, who.stderr
    assert "assumed-role/alice-data/alice@" in json.loads(who.stdout)["Arn"]
    listing = run_client([AWS, "s3", "ls", "s3://alice-data/"], env)
    assert listing.returncode == 0, listing.stderr
    denied = run_client([AWS, "s3", "ls", "s3://bob-data/"], env)
    assert denied.returncode != 0 and "AccessDenied" in denied.stderr
    upload = subprocess.run([AWS, "s3", "cp", "-", "s3://shared-refs/x"], input="x", env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert upload.returncode != 0 and "AccessDenied" in upload.stderr


def test_bob_gets_his_bucket_and_not_alices(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    bob = SidecarProcess(tmp_path / "bob", issuer.mint("bob", new_run())["token"], sandbox)
    try:
        result = json.loads(run_client([*BOTO3_CLIENT, "bob"], bob.env).stdout)
    finally:
        bob.stop()
    assert "assumed-role/bob-data/bob@" in result["caller"]
    assert (result["write_own"], result["list_other"]) == ("ok", "AccessDenied")


def test_audit_names_user_run_role_and_key_but_no_secret(alice: SidecarProcess) -> None:
    run_client([*BOTO3_CLIENT, "alice"], alice.env)
    obtained = alice.audit_events("credentials.obtained")
    assert obtained and obtained[0]["user"] == "alice"
    assert obtained[0]["role"] == "arn:aws:iam::123456789012:role/alice-data"
    assert obtained[0]["access_key_id"].startswith("ASIA")
    text = alice.audit.read_text() + alice.log.read_text()
    assert alice.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] not in text
    assert alice.token_file.read_text() not in text
    container = urllib.request.Request(
        alice.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        headers={"Authorization": alice.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
    )
    with urllib.request.urlopen(container) as resp:
        creds = json.loads(resp.read())
    assert creds["SecretAccessKey"] not in text and creds["Token"] not in text


# renewal and failure --------------------------------------------------------------------------


def test_renewal_across_several_lifetimes_and_an_sts_outage_are_invisible_to_clients(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """10 s credentials renewed at half-life for 30 s; STS is down across one renewal."""
    token = issuer.mint("alice", new_run())["token"]
    sidecar = SidecarProcess(tmp_path / "renew", token, sandbox, "--aws-duration", "10")
    try:
        client = loop_client(30, sidecar.env)
        time.sleep(6)
        # Start a 3 s outage 1 s before the next renewal (due 5 s after the last one).
        last = sidecar.audit_events("credentials.obtained")[-1]["ts"]
        time.sleep(max(0.0, last + 4 - time.time()))
        sandbox.outage(3)
        out, err = client.communicate(timeout=90)
    finally:
        sidecar.stop()
    result = json.loads(out)
    assert result["errors"] == [], err
    assert result["ok"] > 50
    keys = {e["access_key_id"] for e in sidecar.audit_events("credentials.obtained")}
    assert len(keys) >= 4, "expected a renewal at every half-life"
    assert "ServiceUnavailable" in sidecar.log.read_text()  # the outage was met and retried


def test_issuer_outage_shorter_than_validity_causes_no_client_error(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    token = issuer.mint("alice", new_run())["token"]
    sidecar = SidecarProcess(tmp_path / "outage", token, sandbox, "--aws-duration", "20")
    try:
        client = loop_client(25, sidecar.env)
        issuer.stop()  # down across the renewal due at ~10 s
        time.sleep(14)
        issuer.start()
        out, err = client.communicate(timeout=90)
        wait_for(lambda: len(sidecar.audit_events("credentials.obtained")) >= 2,
                 "renewal after the issuer came back", sidecar.proc, sidecar.log)  # fmt: skip
    finally:
        sidecar.stop()
        if issuer.proc is None or issuer.proc.poll() is not None:
            issuer.start()
    result = json.loads(out)
    assert result["errors"] == [], err
    assert "is unreachable" in sidecar.log.read_text()


def test_revoked_run_stops_renewal_and_nothing_is_served_after_expiry(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    run = new_run()
    sidecar = SidecarProcess(
        tmp_path / "revoked", issuer.mint("alice", run)["token"], sandbox, "--aws-duration", "6"
    )
    try:
        status, _ = issuer.post(f"/v1/runs/{run}/revoke", {"reason": "security review"})
        assert status == 200
        request = urllib.request.Request(
            sidecar.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
            headers={"Authorization": sidecar.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
        )

        def refused() -> bool:
            try:
                urllib.request.urlopen(request, timeout=2).close()
                return False
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                assert int(exc.headers["Retry-After"]) >= 1
                body = json.loads(exc.read())
                assert f"run '{run}'" in body["error_description"]
                assert "revoked" in body["error_description"]
                return True

        wait_for(refused, "the sidecar to stop serving after expiry", sidecar.proc, timeout=30)
        cli = run_client([AWS, "s3", "ls", "s3://alice-data/"], sidecar.env)
        assert cli.returncode != 0 and "revoked" in cli.stderr
    finally:
        sidecar.stop()
    assert len(sidecar.audit_events("credentials.obtained")) == 1


def test_permanent_refusal_at_start_exits_with_a_readable_error(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """bob's launch token names bob-data; forcing alice-data's ARN fails the trust policy."""
    token = issuer.mint("bob", new_run())["token"]
    sidecar = SidecarProcess(tmp_path / "denied", token, sandbox, "--aws-role-arn",
                             "arn:aws:iam::123456789012:role/alice-data", wait=False)  # fmt: skip
    assert sidecar.proc.wait(timeout=60) == 2
    log = sidecar.log.read_text()
    assert "user bob" in log and "may not assume arn:aws:iam::123456789012:role/alice-data" in log
    assert "trust policy" in log
    assert "Traceback" not in log
    assert not (sidecar.run_dir / "env").exists()


# lifecycle ------------------------------------------------------------------------------------


def test_sigterm_exits_cleanly_and_removes_secrets(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    sidecar = SidecarProcess(tmp_path / "term", issuer.mint("alice", new_run())["token"], sandbox)
    assert sidecar.stop() == 0
    assert not (sidecar.run_dir / "env").exists()
    assert not (sidecar.run_dir / "aws-container-token").exists()
    assert sidecar.audit_events()[-1]["event"] == "sidecar.stopped"


def test_exit_with_ends_the_sidecar_when_the_job_ends(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    job = subprocess.Popen(["sleep", "3"])
    sidecar = SidecarProcess(tmp_path / "job", issuer.mint("alice", new_run())["token"], sandbox,
                             "--exit-with", str(job.pid))  # fmt: skip
    job.wait()
    assert sidecar.proc.wait(timeout=15) == 0


def test_env_file_is_written_atomically_with_mode_0600(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    env_file = tmp_path / "job.env"
    sidecar = SidecarProcess(tmp_path / "envfile", issuer.mint("alice", new_run())["token"],
                             sandbox, "--env-file", str(env_file))  # fmt: skip
    try:
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert env_file.read_text() == (sidecar.run_dir / "env").read_text()
        assert "unset AWS_ACCESS_KEY_ID" in env_file.read_text()
        secret = (sidecar.run_dir / "aws-container-token").read_bytes()
        assert not secret.endswith(b"\n")
        assert secret.decode() == sidecar.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    finally:
        sidecar.stop()


def test_direct_mode_presents_a_token_file_written_by_someone_else(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """Like a projected Kubernetes token: no launch token, no issuer hop, file re-read."""
    status, body = issuer.exchange(issuer.mint("alice", new_run())["token"])
    assert status == 200
    token_file = tmp_path / "projected-token"
    token_file.write_text(body["access_token"])
    run_dir = tmp_path / "run"
    log = tmp_path / "direct.log"
    proc = start(
        ["serve", "--direct-token-file", str(token_file), "--run-dir", str(run_dir),
         "--aws-role-arn", "arn:aws:iam::123456789012:role/alice-data",
         "--aws-sts-endpoint", sandbox.sts, "--aws-endpoint-url", sandbox.s3, "--clouds", "aws"],
        log,
    )  # fmt: skip
    try:
        wait_for(lambda: (run_dir / "env").exists(), "direct sidecar", proc, log)
        env_text = subprocess.run([*CLI, "env", "--run-dir", str(run_dir)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
        result = json.loads(run_client([*BOTO3_CLIENT, "alice"], apply_shell_env(env_text)).stdout)
    finally:
        stop_process(proc)
    assert "assumed-role/alice-data/direct" in result["caller"]
    assert (result["write_own"], result["list_other"]) == ("ok", "AccessDenied")


def _status(method: str, url: str, headers: dict[str, str]) -> int:
    """One raw HTTP request; http.client lets a test set Host freely."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        conn.putrequest(method, target, skip_host=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_every_guard_on_the_running_daemon(alice: SidecarProcess) -> None:
    container = alice.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    imds = alice.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    host = {"Host": urllib.parse.urlsplit(imds).netloc}
    secret = {"Authorization": alice.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}
    assert _status("GET", container, {**host, **secret}) == 200
    assert _status("GET", container, host) == 401
    assert _status("GET", container, {**host, "Authorization": "guess"}) == 401
    assert _status("GET", container, {**host, **secret, "X-Forwarded-For": "10.0.0.9"}) == 403
    assert _status("GET", container, {**secret, "Host": "attacker.example"}) == 403
    assert _status("GET", container, {**host, **secret, "Origin": "http://a.example"}) == 403
    token_url = f"{imds}/latest/api/token"
    ttl = "X-aws-ec2-metadata-token-ttl-seconds"
    assert _status("PUT", token_url, {**host, ttl: "0"}) == 400
    assert _status("PUT", token_url, {**host, ttl: "21601"}) == 400
    assert _status("PUT", token_url, {**host, ttl: "60", "X-Forwarded-For": "1.2.3.4"}) == 403
    creds = f"{imds}/latest/meta-data/iam/security-credentials/alice-data"
    assert _status("GET", creds, host) == 401
    assert _status("GET", creds, {**host, "X-aws-ec2-metadata-token": "forged.1.x"}) == 401
    reasons = {e["reason"] for e in alice.audit_events("request.refused")}
    assert {"missing or wrong Authorization", "missing or expired IMDSv2 session token",
            "unexpected Host header (possible DNS rebinding)"} <= reasons  # fmt: skip
