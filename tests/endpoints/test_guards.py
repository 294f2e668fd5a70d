"""The guard layer in front of every endpoint."""

from __future__ import annotations

import pytest

from credsidecar.endpoints.guards import (
    REFUSAL_WINDOW,
    _peer_allowed,
    allowed_hosts,
    secrets_match,
)
from tests.endpoints.conftest import SECRET, Sidecar


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "10.0.0.1"},
        {"Forwarded": "for=10.0.0.1"},
        {"Origin": "http://evil.example"},
        {"Referer": "http://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example"},
        {"Host": "127.0.0.1:1"},
    ],
)
@pytest.mark.parametrize("path", ["/v1/credentials/aws", "/latest/api/token", "/healthz"])
async def test_refused_requests(sidecar: Sidecar, headers: dict[str, str], path: str) -> None:
    await sidecar.cache.refresh()
    method = sidecar.client.put if path == "/latest/api/token" else sidecar.client.get
    extra = {"Authorization": SECRET, "X-aws-ec2-metadata-token-ttl-seconds": "60"}
    resp = await method(path, headers={**extra, **headers})
    assert resp.status == 403
    assert "credsidecar:" in (await resp.json())["error_description"]
    (event,) = [e for e in sidecar.events() if e["event"] == "request.refused"]
    assert event["path"] == path and event["peer"] == "127.0.0.1"
    assert SECRET not in sidecar.audit.getvalue()


async def test_localhost_and_ipv4_hosts_are_accepted(sidecar: Sidecar) -> None:
    for host in (f"127.0.0.1:{sidecar.port}", f"localhost:{sidecar.port}"):
        assert (await sidecar.client.get("/healthz", headers={"Host": host})).status == 200


@pytest.mark.parametrize(
    ("address", "link_local", "allowed"),
    [
        ("127.0.0.1", False, True), ("127.8.9.10", False, True), ("::1", False, True),
        ("::ffff:127.0.0.1", False, True), ("10.1.2.3", False, False),
        ("192.168.1.5", False, False), ("169.254.169.254", False, False),
        ("169.254.169.254", True, True), ("not-an-ip", False, False), (None, False, False),
    ],
)  # fmt: skip
def test_peer_must_be_loopback_unless_link_local_is_opted_in(
    address: str | None, link_local: bool, allowed: bool
) -> None:
    assert _peer_allowed(address, link_local) is allowed


async def test_refusals_are_audited_once_per_window_with_a_count(sidecar: Sidecar) -> None:
    for _ in range(5):
        await sidecar.client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert len([e for e in sidecar.events() if e["event"] == "request.refused"]) == 1
    sidecar.refusal_mono.offset += REFUSAL_WINDOW + 1
    await sidecar.client.get("/healthz", headers={"Origin": "http://evil.example"})
    refused = [e for e in sidecar.events() if e["event"] == "request.refused"]
    assert len(refused) == 2 and refused[1]["unwritten_before"] == 4


def test_host_allowlist_names_our_port_only() -> None:
    hosts = allowed_hosts(8080)
    assert "127.0.0.1:8080" in hosts and "localhost:8080" in hosts
    assert "127.0.0.1" not in hosts and "127.0.0.1:8081" not in hosts
    assert "169.254.169.254" in allowed_hosts(80, ["169.254.169.254"])


def test_secret_comparison() -> None:
    assert secrets_match("abc", "abc")
    assert not secrets_match("abd", "abc") and not secrets_match(None, "abc")
    assert not secrets_match("", "abc")
