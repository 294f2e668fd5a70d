"""The issuer as a real process: HTTP(S), rotation by the admin command, restarts, SIGHUP.

Tokens are verified with PyJWT's JWKS client fetching the JWKS over HTTP, not with the code
that signed them.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from tests.e2e.tls import make_ca_and_cert
from tests.support.processes import CLI, reaped, spawn, wait_for
from tests.support.stack import IssuerProcess
from tests.support.timing import scaled


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[IssuerProcess]:
    process = IssuerProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=scaled(60), check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tokens_verify_with_pyjwt_against_jwks_over_http(issuer: IssuerProcess) -> None:
    minted = issuer.mint()
    claims = issuer.verify(minted["token"], audience=issuer.url)
    assert claims["user"] == "alice" and claims["jti"] == minted["jti"]
    status, body = issuer.exchange(minted["token"])
    assert status == 200, body
    cloud = issuer.verify(body["access_token"], audience="sts.amazonaws.com")
    assert cloud["https://aws.amazon.com/source_identity"] == "alice"


def test_rotation_keeps_old_tokens_verifying_and_signs_new_ones_with_the_new_kid(
    issuer: IssuerProcess,
) -> None:
    old = issuer.mint()
    old_kid = pyjwt.get_unverified_header(old["token"])["kid"]
    out = run_cli("issuer", "rotate-key", "--config", str(issuer.config))
    new_kid = out.split()[1]
    assert new_kid != old_kid
    assert issuer.proc is not None
    issuer.proc.send_signal(signal.SIGHUP)  # picks up the rotation now instead of within 5 s
    new: dict[str, Any] = {}

    def signs_with_new_key() -> bool:
        new.update(issuer.mint(run="run-2"))
        return bool(pyjwt.get_unverified_header(new["token"])["kid"] == new_kid)

    wait_for(signs_with_new_key, "the issuer to sign with the rotated key", issuer.proc,
             issuer.log, timeout=30)  # fmt: skip
    with urllib.request.urlopen(f"{issuer.url}/.well-known/jwks.json", timeout=scaled(10)) as r:
        jwks = json.loads(r.read())
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    assert issuer.verify(old["token"], audience=issuer.url)["run"] == "run-1"
    assert issuer.verify(new["token"], audience=issuer.url)["run"] == "run-2"
    # The old launch token still exchanges; the result is signed with the new key.
    status, body = issuer.exchange(old["token"])
    assert status == 200
    assert pyjwt.get_unverified_header(body["access_token"])["kid"] == new_kid


def test_revocation_survives_a_restart(issuer: IssuerProcess) -> None:
    minted = issuer.mint()
    status, _ = issuer.post("/v1/runs/run-1/revoke", {"reason": "test"})
    assert status == 200
    assert issuer.stop() == 0
    issuer.start()
    status, body = issuer.exchange(minted["token"])
    assert status == 403
    assert "run 'run-1'" in body["error_description"] and "revoked" in body["error_description"]


def test_policy_file_change_is_picked_up_and_a_broken_one_is_refused(
    issuer: IssuerProcess,
) -> None:
    policy = issuer.config.parent / "policy.toml"
    good = policy.read_text()
    policy.write_text(good + "\nthis is = = broken\n")
    assert issuer.proc is not None
    issuer.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "policy reload rejected" in issuer.log.read_text(),
             "the issuer to reject the broken policy", issuer.proc, issuer.log)  # fmt: skip
    assert issuer.exchange(issuer.mint()["token"])[0] == 200  # old policy still in force
    assert f"policy.toml:{len(good.splitlines()) + 2}:" in issuer.log.read_text()
    # Disable alice in the file; the watcher notices the change without a signal.
    policy.write_text(good.replace('id = "alice"\n', 'id = "alice"\ndisabled = true\n'))
    wait_for(lambda: issuer.post("/v1/launch-tokens", {"user": "alice", "run": "r9"})[0] == 403,
             "the issuer to pick up the policy change", issuer.proc, issuer.log,
             timeout=30)  # fmt: skip


def test_https_with_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    process = IssuerProcess(tmp_path / "issuer")
    text = process.config.read_text().replace("http://", "https://")
    process.config.write_text(text + f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    process.url = process.url.replace("http://", "https://")
    context = ssl.create_default_context(cafile=str(ca))
    discovery: list[dict[str, object]] = []

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{process.url}/.well-known/openid-configuration",
                                        context=context, timeout=scaled(1)) as resp:  # fmt: skip
                discovery.append(json.loads(resp.read()))
                return True
        except OSError:
            return False

    with reaped(spawn([*CLI, "issuer", "--config", str(process.config)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)) as proc:  # fmt: skip
        wait_for(answers, "the issuer over https", proc, timeout=30)
        assert discovery[0]["issuer"] == process.url
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=scaled(10))
    assert proc.returncode == 0
    # https with a port: still warned about, since AWS wants no port.
    assert b"is not https:// without a port" in stderr
