"""The real sidecar (`credsidecar serve`) with unmodified boto3 and aws CLI processes.

The issuer, the sandbox and each sidecar are separate processes; clients get only the
environment `credsidecar env` prints, applied to a bare PATH/HOME environment.
"""

from __future__ import annotations

import http.client
import json
import math
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

from tests.support.jobenv import apply_shell_env
from tests.support.processes import CLI, reaped, spawn, start, stop_process, wait_for
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

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


def loop_client(seconds: float, env: dict[str, str]) -> subprocess.Popen[str]:
    """boto3 reading an object every 0.2 s for `seconds`; stop it with `reaped`/`stop_process`."""
    return spawn(
        [*BOTO3_CLIENT, "loop", f"{seconds:.1f}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def served_keys(sidecar: SidecarProcess) -> set[str]:
    """The access key ids the sidecar has handed to clients: one per generation used."""
    return {e["access_key_id"] for e in sidecar.audit_events("credentials.served")}


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
    with urllib.request.urlopen(container, timeout=scaled(10)) as resp:
        creds = json.loads(resp.read())
    assert creds["SecretAccessKey"] not in text and creds["Token"] not in text


# renewal and failure --------------------------------------------------------------------------


def test_renewal_across_several_lifetimes_and_an_sts_outage_are_invisible_to_clients(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """10 s credentials renewed at half-life while boto3 reads for 30 s. After the first
    renewal STS goes down until a renewal has met the outage (logged), then comes back, while
    the credentials in hand are still valid: events decide when, not sleeps."""
    lifetime = 10
    token = issuer.mint("alice", new_run())["token"]
    sidecar = SidecarProcess(tmp_path / "renew", token, sandbox, "--aws-duration", str(lifetime))
    try:
        with reaped(loop_client(30, sidecar.env)) as client:
            wait_for(lambda: len(sidecar.audit_events("credentials.obtained")) >= 2,
                     "the first renewal", sidecar.proc, sidecar.log)  # fmt: skip
            # Bounded by a lifetime, so a failing test cannot leave STS down for the module.
            sandbox.outage(lifetime)
            try:
                wait_for(lambda: sidecar.log_has("ServiceUnavailable"),
                         "a renewal to meet the STS outage", sidecar.proc, sidecar.log)  # fmt: skip
            finally:
                sandbox.outage(0)
            out, err = client.communicate(timeout=scaled(90))
    finally:
        sidecar.stop()
    result = json.loads(out)
    assert result["errors"] == [], err
    keys = {e["access_key_id"] for e in sidecar.audit_events("credentials.obtained")}
    assert len(keys) >= 4, "expected a renewal at every half-life"
    assert len(served_keys(sidecar)) >= 3, "the client used several generations"


# The issuer outage below lasts from just after the credentials are obtained until their
# renewal (due at half the lifetime) has failed, plus the issuer's restart; the retried renewal
# must land before the last 5 % of the lifetime (the serve margin). A lifetime of at least
# ISSUER_RESTART_ROOM times the issuer's measured start-up leaves the restart under half of the
# remaining half, with room for the retry; never below MIN_OUTAGE_LIFETIME.
ISSUER_RESTART_ROOM = 5
MIN_OUTAGE_LIFETIME = 20


def outage_lifetime(issuer_startup: float) -> int:
    return max(MIN_OUTAGE_LIFETIME, math.ceil(ISSUER_RESTART_ROOM * issuer_startup))


def test_issuer_outage_shorter_than_validity_causes_no_client_error(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """The issuer stops right after the sidecar is ready and restarts once a renewal has found
    it unreachable; boto3 reads throughout and past the first credentials' expiry."""
    lifetime = outage_lifetime(issuer.startup_seconds)
    token = issuer.mint("alice", new_run())["token"]
    sidecar = SidecarProcess(tmp_path / "outage", token, sandbox,
                             "--aws-duration", str(lifetime))  # fmt: skip
    try:
        [first] = sidecar.audit_events("credentials.obtained")
        # Reads until 3 s past the first credentials' expiry (longer if the client is slow to
        # start): whatever it is served then comes from the renewal after the outage.
        with reaped(loop_client(first["expiry"] + 3 - time.time(), sidecar.env)) as client:
            issuer.stop()
            wait_for(lambda: sidecar.log_has("is unreachable"),
                     "a renewal to find the issuer down", sidecar.proc, sidecar.log,
                     timeout=lifetime)  # fmt: skip
            issuer.start()
            wait_for(lambda: len(sidecar.audit_events("credentials.obtained")) >= 2,
                     "a renewal after the issuer came back", sidecar.proc, sidecar.log,
                     timeout=lifetime)  # fmt: skip
            out, err = client.communicate(timeout=scaled(lifetime + 60))
    finally:
        sidecar.stop()
        if not issuer.running:  # the module's other tests need it
            issuer.start()
    result = json.loads(out)
    assert result["errors"] == [], err
    assert result["ok"] > 0


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
                urllib.request.urlopen(request, timeout=scaled(2)).close()
                return False
            except urllib.error.HTTPError as exc:
                assert exc.code == 403  # the refusal itself, as GCP and Azure answer it
                assert "Retry-After" not in exc.headers
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
    try:
        assert sidecar.proc.wait(timeout=scaled(60)) == 2
    finally:
        sidecar.stop()
    log = sidecar.log.read_text()
    assert "user bob" in log and "may not assume arn:aws:iam::123456789012:role/alice-data" in log
    assert "trust policy" in log
    assert "Traceback" not in log
    assert not (sidecar.run_dir / "env").exists()


# lifecycle ------------------------------------------------------------------------------------


def test_sigterm_exits_cleanly_and_removes_secrets(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    env_file = tmp_path / "job.env"
    sidecar = SidecarProcess(tmp_path / "term", issuer.mint("alice", new_run())["token"], sandbox,
                             "--env-file", str(env_file))  # fmt: skip
    try:
        assert env_file.exists()
    finally:
        assert sidecar.stop() == 0
    assert not env_file.exists()  # the container secret and identity header go with it
    assert not (sidecar.run_dir / "env").exists()
    assert not (sidecar.run_dir / "aws-container-token").exists()
    assert sidecar.audit_events()[-1]["event"] == "sidecar.stopped"


def test_exit_with_ends_the_sidecar_when_the_job_ends(
    tmp_path: Path, issuer: IssuerProcess, sandbox: SandboxProcess
) -> None:
    """The job (`cat`, ended by closing its input) ends only after the test has seen the
    sidecar ready and read its environment, however long the sidecar took to start."""
    with reaped(spawn(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)) as job:
        sidecar = SidecarProcess(tmp_path / "job", issuer.mint("alice", new_run())["token"],
                                 sandbox, "--exit-with", str(job.pid))  # fmt: skip
        try:
            assert sidecar.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
            assert job.stdin is not None
            job.stdin.close()  # the job ends
            assert job.wait(timeout=scaled(15)) == 0
            assert sidecar.proc.wait(timeout=scaled(30)) == 0
        finally:
            sidecar.stop()
    assert not (sidecar.run_dir / "env").exists()


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
        # A file that replaces it is no longer the sidecar's to remove at exit.
        replacement = tmp_path / "job.env.new"
        replacement.write_text("the job's own file\n")
        replacement.replace(env_file)
    finally:
        sidecar.stop()
    assert env_file.read_text() == "the job's own file\n"


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
                                  text=True, check=True, timeout=scaled(30)).stdout  # fmt: skip
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
