"""`[rate_limits]`: token buckets per platform key and per run, on a fake monotonic clock, and
their 429 + Retry-After through the issuer's HTTP API."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.errors import RateLimited
from credsidecar.issuer import rate_limits
from credsidecar.issuer.app import create_app
from credsidecar.issuer.assembly import Issuer, assemble
from credsidecar.issuer.config import (
    DEFAULT_PLATFORM_KEY_RATE,
    DEFAULT_RUN_RATE,
    IssuerConfig,
    RateLimit,
    load_config,
)
from credsidecar.issuer.rate_limits import AUDIT_WINDOW, RateLimiter, rate_limiter
from tests.issuer.conftest import IssuerFixture
from tests.issuer.test_app import AWS_AUD, AZURE_AUD, exchange, forge, mint
from tests.support.clock import FakeClock

PLATFORM = "dev-platform"  # the example config's platform key


def _config(platform: RateLimit | None = None, run: RateLimit | None = None) -> IssuerConfig:
    return IssuerConfig(
        issuer_url="https://issuer.example",
        host="127.0.0.1",
        port=8400,
        state_dir=Path("/nonexistent"),
        policy_path=Path("/nonexistent/policy.toml"),
        platform_key_rate=platform,
        run_rate=run,
    )


def _allowed(attempt: Any, times: int) -> int:
    """How many of `times` calls of `attempt()` the limiter let through."""
    passed = 0
    for _ in range(times):
        try:
            attempt()
        except RateLimited:
            continue
        passed += 1
    return passed


def _events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


# bucket arithmetic ---------------------------------------------------------------------------


def test_burst_passes_then_refusals_until_the_bucket_refills(clock: FakeClock) -> None:
    limiter = RateLimiter(_config(run=RateLimit(rate=2, burst=3)), clock=clock.mono)
    assert _allowed(lambda: limiter.exchange("r"), 10) == 3
    clock.advance(0.5)  # 2 a second: one more request's worth
    assert _allowed(lambda: limiter.exchange("r"), 10) == 1
    clock.advance(1000)  # an idle bucket fills up to its burst, no further
    assert _allowed(lambda: limiter.exchange("r"), 10) == 3


def test_retry_after_is_whole_seconds_until_the_next_request_and_at_least_one(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(_config(run=RateLimit(rate=0.1, burst=1)), clock=clock.mono)
    limiter.exchange("r")
    with pytest.raises(RateLimited) as refused:
        limiter.exchange("r")
    assert refused.value.retry_after == 10 and refused.value.status == 429
    clock.advance(9.5)
    with pytest.raises(RateLimited) as refused:
        limiter.exchange("r")
    assert refused.value.retry_after == 1  # 0.5 s rounded up, never 0
    clock.advance(0.5)
    limiter.exchange("r")


def test_share_divides_rate_and_burst_among_workers(clock: FakeClock) -> None:
    limiter = RateLimiter(_config(run=RateLimit(rate=10, burst=20)), share=4, clock=clock.mono)
    assert _allowed(lambda: limiter.exchange("r"), 50) == 5  # burst 20 / 4
    clock.advance(0.4)  # 10 / 4 = 2.5 a second: one request in 0.4 s
    assert _allowed(lambda: limiter.exchange("r"), 50) == 1


def test_a_share_of_a_small_burst_still_allows_one_request(clock: FakeClock) -> None:
    limiter = RateLimiter(_config(run=RateLimit(rate=1, burst=2)), share=8, clock=clock.mono)
    assert _allowed(lambda: limiter.exchange("r"), 5) == 1


def test_mint_takes_from_both_buckets_or_from_neither(clock: FakeClock) -> None:
    config = _config(platform=RateLimit(rate=1, burst=1), run=RateLimit(rate=0.001, burst=3))
    limiter = RateLimiter(config, clock=clock.mono)
    limiter.mint("p", "run-a")
    with pytest.raises(RateLimited, match=r"platform key 'p' is over .* per_platform_key"):
        limiter.mint("p", "run-b")
    # The refused mint took nothing from run-b's bucket: its whole burst is left.
    assert _allowed(lambda: limiter.exchange("run-b"), 10) == 3
    # And a refusal by a run's bucket takes nothing from the platform key's.
    clock.advance(1)
    with pytest.raises(RateLimited, match=r"run 'run-b' is over .* per_run"):
        limiter.mint("p", "run-b")
    limiter.mint("p", "run-c")


def test_a_runaway_run_does_not_slow_another_run(clock: FakeClock) -> None:
    limiter = RateLimiter(_config(run=RateLimit(rate=1, burst=5)), clock=clock.mono)
    assert _allowed(lambda: limiter.exchange("runaway"), 1000) == 5
    assert _allowed(lambda: limiter.exchange("quiet"), 5) == 5


def test_refusal_names_the_limit_its_configured_rate_and_the_way_out(clock: FakeClock) -> None:
    config = _config(run=RateLimit(rate=100, burst=40_000))
    limiter = RateLimiter(config, share=2, clock=clock.mono)
    for _ in range(20_000):
        limiter.exchange("run-42")
    with pytest.raises(RateLimited) as refused:
        limiter.exchange("run-42")
    message = refused.value.message
    assert "run 'run-42'" in message
    # The configured figures (the node's), not this worker's share of them.
    assert "(rate = 100 a second, burst = 40000)" in message
    assert "raise `[rate_limits] per_run` in the issuer config" in message
    assert "retry in 1 s" in message


def test_default_limits_pass_a_launch_storm_of_10000_tasks_on_3_clouds_then_renewals(
    clock: FakeClock,
) -> None:
    config = _config(platform=DEFAULT_PLATFORM_KEY_RATE, run=DEFAULT_RUN_RATE)
    workers = [RateLimiter(config, share=2, clock=clock.mono) for _ in range(2)]
    for worker in workers:  # a run's one mint, then 15,000 exchanges a worker, all at once
        worker.mint("platform", "storm")
        for _ in range(15_000):
            worker.exchange("storm")
    # Renewals: each of the 30,000 credentials every ~30 minutes, ~17 a second (8.5 a worker).
    for _ in range(600):
        clock.advance(1.0)
        for worker in workers:
            for _ in range(9):
                worker.exchange("storm")


def test_default_platform_key_limit_passes_500_launches_at_once(clock: FakeClock) -> None:
    limiter = RateLimiter(_config(platform=DEFAULT_PLATFORM_KEY_RATE), clock=clock.mono)
    for i in range(500):
        limiter.mint("platform", f"run-{i}")
    with pytest.raises(RateLimited):
        limiter.mint("platform", "run-500")


def test_tables_stay_bounded_however_many_keys(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limits, "MAX_BUCKETS", 100)
    config = _config(platform=RateLimit(rate=1, burst=5), run=RateLimit(rate=1, burst=5))
    limiter = RateLimiter(config, clock=clock.mono)
    for i in range(5_000):
        limiter.mint(f"key-{i}", f"run-{i}")
        limiter.exchange(f"other-run-{i}")
    assert len(limiter) <= 200  # two tables of at most MAX_BUCKETS
    # Idle buckets (full again, audit window over) are dropped altogether.
    clock.advance(AUDIT_WINDOW + 5)
    assert len(limiter) == 0


def test_no_limit_configured_means_no_limiter() -> None:
    assert rate_limiter(_config()) is None
    only_runs = rate_limiter(_config(run=RateLimit(rate=1, burst=1)))
    assert only_runs is not None
    for i in range(100):  # no platform key limit: mints are limited per run only
        only_runs.mint("p", f"run-{i}")


def test_off_in_the_config_turns_a_default_limit_off(tmp_path: Path) -> None:
    path = tmp_path / "issuer.toml"
    path.write_text(
        'issuer_url = "https://x"\n[rate_limits]\nper_run = "off"\nper_platform_key = "off"\n'
    )
    config = load_config(path)
    assert config.run_rate is None and config.platform_key_rate is None


# audit ---------------------------------------------------------------------------------------


def test_a_flood_of_refusals_is_audited_once_per_key_and_window(clock: FakeClock) -> None:
    stream = io.StringIO()
    audit = AuditLog(stream, clock)
    limiter = RateLimiter(_config(run=RateLimit(rate=0.001, burst=1)), clock=clock.mono,
                          audit=audit)  # fmt: skip
    assert _allowed(lambda: limiter.exchange("r"), 1000) == 1
    (line,) = _events(stream, "rate_limited")
    assert line["limit"] == "per_run" and line["run"] == "r"
    assert (line["rate"], line["burst"]) == (0.001, 1)
    clock.advance(AUDIT_WINDOW)
    assert _allowed(lambda: limiter.exchange("r"), 10) == 0
    _, second = _events(stream, "rate_limited")
    assert second["refused_unlogged_before"] == 998  # 999 refused, the first one written


def test_refusals_of_many_keys_write_a_bounded_number_of_lines(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limits, "MAX_AUDIT_LINES", 5)
    stream = io.StringIO()
    limiter = RateLimiter(_config(run=RateLimit(rate=0.001, burst=1)), clock=clock.mono,
                          audit=AuditLog(stream, clock))  # fmt: skip
    for i in range(100):
        limiter.exchange(f"run-{i}")
        with pytest.raises(RateLimited):
            limiter.exchange(f"run-{i}")
    assert len(_events(stream, "rate_limited")) == 5
    clock.advance(AUDIT_WINDOW)
    with pytest.raises(RateLimited):
        limiter.exchange("run-0")
    (suppressed,) = _events(stream, "rate_limited.suppressed")
    assert suppressed["count"] == 95


# through the issuer's HTTP API ---------------------------------------------------------------


def _limited_issuer(issuer: IssuerFixture, **limits: RateLimit | None) -> Issuer:
    """The fixture's issuer state, assembled again with `limits` on the fake monotonic clock."""
    config = replace(issuer.config, **limits)
    state = issuer.service
    return assemble(config, state.store, state.keys, state.policy_holder, state.audit,
                    issuer.clock, mono=issuer.clock.mono)  # fmt: skip


async def test_exchange_over_the_run_limit_is_429_with_retry_after_and_signs_nothing(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    service = _limited_issuer(issuer, run_rate=RateLimit(rate=0.5, burst=3))
    client: TestClient = await aiohttp_client(create_app(service))
    token = (await mint(client, issuer, run="run-1"))["token"]  # takes one of the 3
    for audience in (AWS_AUD, AZURE_AUD):
        assert (await exchange(client, token, audience)).status == 200
    events = len(issuer.audit_events())
    resp = await exchange(client, token)
    assert resp.status == 429, await resp.text()
    assert resp.headers["Retry-After"] == "2"  # 0.5 a second: one request every 2 s
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["error"] == "rate_limited"
    assert "run 'run-1' is over the issuer's per_run rate limit" in body["error_description"]
    assert "(rate = 0.5 a second, burst = 3)" in body["error_description"]
    assert "[rate_limits] per_run" in body["error_description"]
    # Nothing was signed (no token.exchanged), and one audit line says why (no per-request
    # token.exchange_refused line).
    (line,) = issuer.audit_events()[events:]
    assert line["event"] == "rate_limited" and line["run"] == "run-1"
    await issuer.clock.advance(2)
    assert (await exchange(client, token)).status == 200


async def test_mint_over_the_platform_key_limit_is_429_naming_the_key(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    service = _limited_issuer(issuer, platform_key_rate=RateLimit(rate=1, burst=2))
    client: TestClient = await aiohttp_client(create_app(service))
    await mint(client, issuer, run="run-1")
    await mint(client, issuer, run="run-2")
    resp = await client.post(
        "/v1/launch-tokens", json={"user": "alice", "run": "run-3"}, headers=issuer.auth
    )
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    description = (await resp.json())["error_description"]
    assert f"platform key {PLATFORM!r}" in description
    assert "[rate_limits] per_platform_key" in description
    minted = [e for e in issuer.audit_events() if e["event"] == "launch_token.minted"]
    assert [e["run"] for e in minted] == ["run-1", "run-2"]


async def test_a_runaway_run_leaves_other_runs_their_exchanges(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    service = _limited_issuer(issuer, run_rate=RateLimit(rate=0.01, burst=4))
    client: TestClient = await aiohttp_client(create_app(service))
    runaway = (await mint(client, issuer, run="runaway"))["token"]
    quiet = (await mint(client, issuer, run="quiet"))["token"]
    statuses = [(await exchange(client, runaway)).status for _ in range(10)]
    assert statuses == [200] * 3 + [429] * 7
    assert [(await exchange(client, quiet)).status for _ in range(3)] == [200] * 3


async def test_garbage_tokens_naming_a_run_do_not_drain_its_bucket(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    service = _limited_issuer(issuer, run_rate=RateLimit(rate=0.01, burst=4))
    client: TestClient = await aiohttp_client(create_app(service))
    token = (await mint(client, issuer, run="run-1"))["token"]
    other = (await mint(client, issuer, run="run-2"))["token"]
    # Tampered tokens claiming run-1, by an attacker who holds run-2's token.
    for _ in range(20):
        resp = await exchange(client, forge(other, run="run-1"))
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    assert [(await exchange(client, token)).status for _ in range(3)] == [200] * 3


async def test_limits_off_put_no_limiter_in_the_path(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    service = _limited_issuer(issuer, run_rate=None, platform_key_rate=None)
    assert service.tokens.limiter is None
    client: TestClient = await aiohttp_client(create_app(service))
    token = (await mint(client, issuer, run="run-1"))["token"]
    assert {(await exchange(client, token)).status for _ in range(20)} == {200}
