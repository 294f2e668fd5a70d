"""The guard layer in front of every endpoint."""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.config import add_sidecar_arguments, from_args
from credsidecar.endpoints.guards import (
    MAX_REFUSAL_LINES,
    REFUSAL_WINDOW,
    Guard,
    PeerPolicy,
    RefusalLog,
    _peer_allowed,
    allowed_hosts,
    secret_bytes,
    secrets_match,
    well_known_hosts,
)
from credsidecar.endpoints.peers import ConnectionPeers, PeerUnknown
from credsidecar.errors import ConfigError
from credsidecar.server import create_sidecar_app
from tests.endpoints.conftest import SECRET, Sidecar
from tests.support.ports import held_port


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "10.0.0.1"},
        {"Forwarded": "for=10.0.0.1"},
        {"Via": "1.1 squid"},
        {"X-Forwarded-Host": "evil.example"},
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Port": "443"},
        {"Origin": "http://evil.example"},
        {"Referer": "http://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Mode": "navigate"},
        {"X-Real-IP": "10.0.0.1"},
        # Header names are case-insensitive: any spelling is refused.
        {"ORIGIN": "http://evil.example"},
        {"x-forwarded-for": "10.0.0.1"},
        {"sec-fetch-site": "cross-site"},
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


@pytest.mark.parametrize(
    ("address", "local", "allowed"),
    [
        ("169.254.169.254", "169.254.169.254", True), ("fd00:ec2::254", "fd00:ec2::254", True),
        ("169.254.170.2", "169.254.170.2", True), ("127.0.0.1", "169.254.169.254", True),
        # Another host of the link, or an address of ours the job did not connect to.
        ("169.254.1.7", "169.254.169.254", False), ("10.0.0.5", "169.254.169.254", False),
        ("fd00:ec2::253", "fd00:ec2::254", False), ("169.254.169.254", None, False),
        ("0.0.0.0", "0.0.0.0", False),
    ],
)  # fmt: skip
def test_a_peer_on_the_address_it_connected_to_is_in_this_namespace(
    address: str, local: str | None, allowed: bool
) -> None:
    """--well-known: a job reaching 169.254.169.254 on its namespace's loopback connects from
    that very address; nothing outside the namespace can (Linux drops such martians)."""
    assert _peer_allowed(address, False, local) is allowed


def test_well_known_hosts_accept_the_names_without_and_with_port_80() -> None:
    hosts = well_known_hosts(["169.254.169.254", "metadata.google.internal", "[fd00:ec2::254]"])
    assert {"169.254.169.254", "metadata.google.internal:80", "[fd00:ec2::254]"} <= hosts
    assert "169.254.169.254:8080" not in hosts and "localhost" not in hosts


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
    assert secrets_match("abc", secret_bytes("abc"))
    assert not secrets_match("abd", secret_bytes("abc")) and not secrets_match(None, b"abc")
    assert not secrets_match("", secret_bytes("abc"))


# Which local user the peer is ----------------------------------------------------------------

Serve = Callable[[PeerPolicy], Awaitable[tuple[TestClient, io.StringIO]]]


@pytest.fixture
def serve(aiohttp_client: Callable[..., Any]) -> Serve:
    """The sidecar app (health routes only) behind a guard with the given peer policy."""

    async def start(policy: PeerPolicy) -> tuple[TestClient, io.StringIO]:
        stream, (port, server_kwargs) = io.StringIO(), held_port()
        guard = Guard(allowed_hosts(port), RefusalLog(AuditLog(stream)), peers=policy)
        app = create_sidecar_app(guard, [])
        client = await aiohttp_client(app, server_kwargs=server_kwargs)
        return client, stream

    return start


def refusals(stream: io.StringIO) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in events if e["event"].startswith("request.refused")]


def uid_is(uid: int, calls: list[object] | None = None) -> ConnectionPeers:
    """Peers resolved to `uid`, as if that user had connected."""

    def lookup(sockname: object, peername: object) -> int:
        if calls is not None:
            calls.append(peername)
        return uid

    return ConnectionPeers(lookup)


async def test_a_real_loopback_peer_is_identified_as_this_process_user(serve: Serve) -> None:
    client, stream = await serve(PeerPolicy(frozenset({os.geteuid()})))
    assert (await client.get("/healthz")).status == 200
    # A policy without our uid (nor root implied) refuses us, naming the uid it found.
    client, stream = await serve(PeerPolicy(frozenset({12345})))
    for path in ("/healthz", "/readyz"):
        resp = await client.get(path)
        assert resp.status == 403
        body = await resp.json()
        assert f"peer uid {os.geteuid()} is not the job's user" in body["error_description"]
        assert f"--allow-uid {os.geteuid()}" in body["error_description"]
    (event,) = refusals(stream)  # one line per (peer, reason) and window
    assert event["uid"] == os.geteuid() and event["peer"] == "127.0.0.1"
    assert event["reason"].startswith(f"peer uid {os.geteuid()} is not the job's user")


async def test_another_users_peer_is_refused_unless_allowed(serve: Serve) -> None:
    job = frozenset({os.geteuid(), 0})
    client, stream = await serve(PeerPolicy(job, uid_is(65534)))
    resp = await client.get("/healthz")
    assert resp.status == 403
    (event,) = refusals(stream)
    assert event["uid"] == 65534 and "peer uid 65534 is not the job's user" in event["reason"]
    client, _ = await serve(PeerPolicy(job | {65534}, uid_is(65534)))
    assert (await client.get("/healthz")).status == 200
    client, _ = await serve(PeerPolicy(job, uid_is(0)))
    assert (await client.get("/healthz")).status == 200  # root is always answered


async def test_any_local_peer_turns_the_check_off(serve: Serve) -> None:
    calls: list[object] = []
    client, _ = await serve(PeerPolicy(None, uid_is(65534, calls)))
    assert (await client.get("/healthz")).status == 200
    assert calls == []  # not even looked up


async def test_an_unidentifiable_peer_is_refused(serve: Serve) -> None:
    def lookup(sockname: object, peername: object) -> int:
        raise PeerUnknown("cannot read /proc/net/tcp (Permission denied)")

    client, stream = await serve(PeerPolicy(frozenset({os.geteuid(), 0}), ConnectionPeers(lookup)))
    resp = await client.get("/healthz")
    assert resp.status == 403
    assert "cannot tell which local user the peer is" in (await resp.json())["error_description"]
    (event,) = refusals(stream)
    assert "Permission denied" in event["reason"] and "uid" not in event


async def test_keep_alive_requests_look_the_peer_up_once(serve: Serve) -> None:
    calls: list[object] = []
    client, _ = await serve(PeerPolicy(frozenset({65534}), uid_is(65534, calls)))
    for _ in range(5):
        assert (await client.get("/healthz")).status == 200
    assert len(calls) == 1


def test_the_job_policy_is_our_user_root_and_the_allowed_uids() -> None:
    assert PeerPolicy.for_job().uids == {os.geteuid(), 0}
    assert PeerPolicy.for_job([1001, 1002]).uids == {os.geteuid(), 0, 1001, 1002}
    assert PeerPolicy.for_job([1001], any_local_peer=True).uids is None


def _config(argv: list[str], env: dict[str, str]) -> Any:
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser, env)
    return from_args(parser.parse_args(["--token-file", "t", *argv]))


def test_allow_uid_and_any_local_peer_flags() -> None:
    config = _config(["--allow-uid", "1001", "--allow-uid", "1002"], {})
    assert config.allow_uids == {1001, 1002} and config.any_local_peer is False
    config = _config([], {"CREDSIDECAR_ALLOW_UID": "7, 8", "CREDSIDECAR_ANY_LOCAL_PEER": "1"})
    assert config.allow_uids == {7, 8} and config.any_local_peer is True
    assert _config(["--any-local-peer"], {}).any_local_peer is True
    for bad in ("-1", "bob", "4294967295", "1.5"):
        with pytest.raises(ConfigError, match="is not a uid"):
            _config(["--allow-uid", bad], {})
    with pytest.raises(ConfigError, match="is not a uid"):
        _config([], {"CREDSIDECAR_ALLOW_UID": "1000,nobody"})


# The refusal audit cannot fill the disk -------------------------------------------------------


@dataclass
class FakeRequest:
    path: str
    remote: str = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log() -> tuple[RefusalLog, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    return RefusalLog(AuditLog(stream), mono=clock), stream, clock


def _record(log: RefusalLog, path: str, reason: str, uid: int | None = None) -> None:
    log.record(cast(web.Request, FakeRequest(path)), reason, uid)


def test_distinct_paths_from_one_peer_write_one_line_per_window() -> None:
    log, stream, clock = _log()
    for i in range(60):
        _record(log, f"/latest/meta-data/{i}", "missing or expired IMDSv2 session token", 1000)
    assert len(refusals(stream)) == 1
    clock.now += REFUSAL_WINDOW
    _record(log, "/again", "missing or expired IMDSv2 session token", 1000)
    second = refusals(stream)[1]
    assert second["unwritten_before"] == 59 and second["path"] == "/again"


def test_refusal_lines_are_capped_per_window_with_a_suppressed_summary() -> None:
    log, stream, clock = _log()
    for uid in range(MAX_REFUSAL_LINES + 30):  # each peer a new (peer, reason) key
        _record(log, "/healthz", f"peer uid {uid} is not the job's user", uid)
    assert len(refusals(stream)) == MAX_REFUSAL_LINES
    clock.now += REFUSAL_WINDOW / 2
    _record(log, "/healthz", "another reason", 1)
    assert len(refusals(stream)) == MAX_REFUSAL_LINES  # still the same window
    clock.now += REFUSAL_WINDOW / 2
    _record(log, "/healthz", "another reason", 1)
    events = refusals(stream)[MAX_REFUSAL_LINES:]
    assert [e["event"] for e in events] == ["request.refused.suppressed", "request.refused"]
    assert events[0]["count"] == 31
    log.flush()  # nothing suppressed since: no second summary
    assert len(refusals(stream)) == MAX_REFUSAL_LINES + 2


def test_the_summary_is_written_at_flush_too() -> None:
    log, stream, _ = _log()
    for uid in range(MAX_REFUSAL_LINES + 1):
        _record(log, "/", "refused", uid)
    log.flush()
    last = refusals(stream)[-1]
    assert last["event"] == "request.refused.suppressed" and last["count"] == 1


def test_refused_paths_are_truncated() -> None:
    log, stream, _ = _log()
    _record(log, "/" + "a" * 5000, "refused")
    (event,) = refusals(stream)
    assert len(event["path"]) == 200 and event["peer"] == "127.0.0.1" and "uid" not in event
