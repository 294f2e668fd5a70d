"""The GCE metadata server contract over real HTTP, with a fake exchanger behind the caches."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.cache_family import MAX_PROBATION, MAX_PROTECTED, CacheFamily
from credsidecar.clouds.contracts import GCP_CLOUD_PLATFORM as CLOUD_PLATFORM
from credsidecar.clouds.contracts import GcpIdToken, GcpToken
from credsidecar.endpoints.gcp import (
    MAX_AUDIENCE_LENGTH,
    MAX_SCOPES,
    GcpEndpoints,
    add_flavor,
)
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.errors import Forbidden, Unavailable
from tests.support import raw_http
from tests.support.clock import FakeClock
from tests.support.ports import held_port

SA = "alice@sandbox-project.iam.gserviceaccount.com"
V1 = "/computeMetadata/v1"
FLAVOR = {"Metadata-Flavor": "Google"}


@dataclass
class FakeGcp:
    token_requests: list[tuple[str, ...]] = field(default_factory=list)
    error: Exception | None = None

    async def access_token(self, scopes: tuple[str, ...]) -> GcpToken:
        self.token_requests.append(scopes)
        if self.error:
            raise self.error
        return GcpToken(f"ya29.{len(self.token_requests)}", time.time() + 3600, scopes)

    async def id_token(self, audience: str) -> GcpIdToken:
        return GcpIdToken(f"id-token-for-{audience}", time.time() + 3600, audience)


@pytest.fixture
def fake() -> FakeGcp:
    return FakeGcp()


@pytest.fixture
async def client(aiohttp_client: Callable[..., Any], fake: FakeGcp) -> TestClient:
    audit = AuditLog(io.StringIO())
    tokens: CacheFamily[tuple[str, ...], GcpToken] = CacheFamily("GCP", fake.access_token, 5)
    ids: CacheFamily[str, GcpIdToken] = CacheFamily("GCP ID", fake.id_token, 5)
    endpoints = GcpEndpoints(tokens, ids, SA, "sandbox-project", "123456", audit,
                             {"user": "alice", "run": "r1"})  # fmt: skip
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit), decorate=add_flavor)
    app = web.Application()
    app.add_routes(guard.routes(endpoints.routes()))
    return await aiohttp_client(app, server_kwargs=server_kwargs)


async def test_ping_answers_without_the_flavor_header(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200 and resp.headers["Metadata-Flavor"] == "Google"


async def test_metadata_needs_the_flavor_header_and_echoes_it_on_errors(
    client: TestClient,
) -> None:
    resp = await client.get(f"{V1}/instance/service-accounts/default/token")
    assert resp.status == 403 and resp.headers["Metadata-Flavor"] == "Google"
    proxied = await client.get(f"{V1}/project/project-id",
                               headers={**FLAVOR, "X-Forwarded-For": "10.0.0.1"})  # fmt: skip
    assert proxied.status == 403 and proxied.headers["Metadata-Flavor"] == "Google"
    unknown = await client.get(f"{V1}/instance/nonexistent", headers=FLAVOR)
    assert unknown.status == 404 and unknown.headers["Metadata-Flavor"] == "Google"


async def test_token_with_integer_expires_in_cached_per_scope_set(
    client: TestClient, fake: FakeGcp
) -> None:
    path = f"{V1}/instance/service-accounts/default/token"
    resp = await client.get(path, headers=FLAVOR)
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["token_type"] == "Bearer" and body["access_token"] == "ya29.1"
    assert isinstance(body["expires_in"], int) and 3590 <= body["expires_in"] <= 3600
    scoped = f"{path}?scopes=https://b.example/s2,https://a.example/s1"
    first = await (await client.get(scoped, headers=FLAVOR)).json()
    again = await (await client.get(scoped, headers=FLAVOR)).json()
    assert first["access_token"] == again["access_token"] == "ya29.2"
    assert fake.token_requests == [
        (CLOUD_PLATFORM,),
        ("https://a.example/s1", "https://b.example/s2"),
    ]
    by_email = await client.get(f"{V1}/instance/service-accounts/{SA}/token", headers=FLAVOR)
    assert (await by_email.json())["access_token"] == "ya29.1"


async def test_service_account_documents(client: TestClient) -> None:
    base = f"{V1}/instance/service-accounts"
    info = await (await client.get(f"{base}/default/?recursive=true", headers=FLAVOR)).json()
    assert info == {"aliases": ["default"], "email": SA, "scopes": [CLOUD_PLATFORM]}
    assert await (await client.get(f"{base}/default/email", headers=FLAVOR)).text() == SA
    listing = await (await client.get(f"{base}/", headers=FLAVOR)).text()
    assert listing == f"default/\n{SA}/\n"
    other = await client.get(f"{base}/bob@x.iam.gserviceaccount.com/email", headers=FLAVOR)
    assert other.status == 404


async def test_identity_token_for_an_audience(client: TestClient) -> None:
    path = f"{V1}/instance/service-accounts/default/identity"
    for audience in ("https://svc.example", "https://other.example", "https://svc.example"):
        # Each query's parse is kept: asked again, the same query names the same audience.
        resp = await client.get(f"{path}?audience={audience}&format=full", headers=FLAVOR)
        assert await resp.text() == f"id-token-for-{audience}"
        assert (await client.get(path, headers=FLAVOR)).status == 400


async def test_project_and_universe(client: TestClient) -> None:
    assert await (await client.get(f"{V1}/project/project-id", headers=FLAVOR)).text() == (
        "sandbox-project"
    )
    number = await client.get(f"{V1}/project/numeric-project-id", headers=FLAVOR)
    assert await number.text() == "123456"
    universe = await client.get(f"{V1}/universe/universe-domain", headers=FLAVOR)
    assert await universe.text() == "googleapis.com"


async def test_directories_redirect_to_their_slash(client: TestClient) -> None:
    resp = await client.get(f"{V1}/instance", headers=FLAVOR, allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == f"{V1}/instance/"


@pytest.mark.parametrize(
    "target",
    [
        b"/computeMetadata/v1/instance?x=%0d%0aSet-Cookie:%20a=b",
        b"/computeMetadata/v1/instance/service-accounts/a%0d%0aX-Evil:%201?recursive=true",
        b"/computeMetadata/v1/instance?q=%C3%A9&%ff",
    ],
)
async def test_redirect_keeps_the_raw_path_and_query_encoded(
    client: TestClient, target: bytes
) -> None:
    """Decoded, a %0d%0a put CR LF into Location and aiohttp sent no answer at all."""
    assert client.port is not None
    resp = await raw_http.get(client.port, target, b"Metadata-Flavor: Google")
    assert resp.status == 301
    path, _, query = target.decode().partition("?")
    assert resp.headers["location"] == f"{path}/" + (f"?{query}" if query else "")
    assert "x-evil" not in resp.headers and "set-cookie" not in resp.headers


async def test_upstream_refusal_is_reported_with_the_cause(
    client: TestClient, fake: FakeGcp
) -> None:
    fake.error = Forbidden("user alice may not impersonate alice@...: denied")
    resp = await client.get(f"{V1}/instance/service-accounts/default/token", headers=FLAVOR)
    assert resp.status == 403 and resp.headers["Metadata-Flavor"] == "Google"
    assert "may not impersonate" in (await resp.json())["error_description"]
    fake.error = None  # the failed start is forgotten: the next request tries again
    resp = await client.get(f"{V1}/instance/service-accounts/default/token", headers=FLAVOR)
    assert resp.status == 200


# bounded keys, eviction and refusals ------------------------------------------------------------

TOKEN_PATH = f"{V1}/instance/service-accounts/default/token"
IDENTITY_PATH = f"{V1}/instance/service-accounts/default/identity"


async def test_many_scope_sets_and_audiences_do_not_lock_out_the_ones_in_use(
    client: TestClient, fake: FakeGcp
) -> None:
    """Keys beyond what a family keeps evict those asked for once, not one in use."""
    audience_in_use = f"{IDENTITY_PATH}?audience=https://svc"
    for _ in range(2):
        assert (await client.get(TOKEN_PATH, headers=FLAVOR)).status == 200
        assert (await client.get(audience_in_use, headers=FLAVOR)).status == 200
    for i in range(2 * (MAX_PROTECTED + MAX_PROBATION)):
        scoped = await client.get(f"{TOKEN_PATH}?scopes=https://s.example/{i}", headers=FLAVOR)
        assert scoped.status == 200, await scoped.text()
        audience = await client.get(f"{IDENTITY_PATH}?audience=https://a{i}", headers=FLAVOR)
        assert audience.status == 200, await audience.text()
    assert (await (await client.get(TOKEN_PATH, headers=FLAVOR)).json())["access_token"] == "ya29.1"
    assert fake.token_requests.count((CLOUD_PLATFORM,)) == 1
    assert (await client.get(audience_in_use, headers=FLAVOR)).status == 200


async def test_overlong_or_too_many_scopes_and_overlong_audiences_are_refused(
    client: TestClient, fake: FakeGcp
) -> None:
    many = ",".join(f"https://s.example/{i}" for i in range(MAX_SCOPES + 1))
    for path in (
        f"{TOKEN_PATH}?scopes={many}",
        f"{TOKEN_PATH}?scopes=https://s.example/{'x' * 3000}",
        f"{IDENTITY_PATH}?audience=https://svc/{'x' * MAX_AUDIENCE_LENGTH}",
    ):
        resp = await client.get(path, headers=FLAVOR)
        assert resp.status == 400 and resp.headers["Metadata-Flavor"] == "Google"
        assert "scopes" in await resp.text() or "audience" in await resp.text()
    assert fake.token_requests == []


@dataclass
class ClockedFake(FakeGcp):
    """Expiries on a clock the test moves."""

    clock: FakeClock = field(default_factory=FakeClock)

    async def access_token(self, scopes: tuple[str, ...]) -> GcpToken:
        self.token_requests.append(scopes)
        if self.error:
            raise self.error
        expires_at = self.clock.wall() + 3600
        return GcpToken(f"ya29.{len(self.token_requests)}", expires_at, scopes)


@dataclass
class ClockedGcp:
    client: TestClient
    fake: ClockedFake
    clock: FakeClock


@pytest.fixture
async def clocked(aiohttp_client: Callable[..., Any]) -> AsyncIterator[ClockedGcp]:
    fake = ClockedFake()
    clock = fake.clock
    tokens: CacheFamily[tuple[str, ...], GcpToken] = CacheFamily(
        "GCP", fake.access_token, 0, pinned=[(CLOUD_PLATFORM,)],
        wall=clock.wall, mono=clock.mono, sleep=clock.sleep,
    )  # fmt: skip
    ids: CacheFamily[str, GcpIdToken] = CacheFamily("GCP ID", fake.id_token, 0, wall=clock.wall,
                                                    mono=clock.mono, sleep=clock.sleep)  # fmt: skip
    audit = AuditLog(io.StringIO())
    endpoints = GcpEndpoints(tokens, ids, SA, "sandbox-project", "123456", audit,
                             {"user": "alice", "run": "r1"}, wall=clock.wall)  # fmt: skip
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit), decorate=add_flavor)
    app = web.Application()
    app.add_routes(guard.routes(endpoints.routes()))
    client = await aiohttp_client(app, server_kwargs=server_kwargs)
    yield ClockedGcp(client, fake, clock)
    await tokens.close()
    await ids.close()


async def test_a_revoked_run_is_403_for_a_cached_and_a_new_scope_set_alike(
    clocked: ClockedGcp,
) -> None:
    client, fake = clocked.client, clocked.fake
    assert (await client.get(TOKEN_PATH, headers=FLAVOR)).status == 200
    fake.error = Forbidden("run 'r1' of user 'alice' was revoked; start a new run")
    await clocked.clock.advance(1800)  # the renewal at half-life is refused ...
    assert (await client.get(TOKEN_PATH, headers=FLAVOR)).status == 200  # ... the token in hand
    await clocked.clock.advance(1800)  # is served until it expires
    for path in (TOKEN_PATH, f"{TOKEN_PATH}?scopes=https://s.example/new"):
        resp = await client.get(path, headers=FLAVOR)
        assert resp.status == 403 and "Retry-After" not in resp.headers
        assert "was revoked" in (await resp.json())["error_description"]


async def test_an_outage_is_503_with_retry_after(clocked: ClockedGcp) -> None:
    clocked.fake.error = Unavailable("Google STS is unreachable", retry_after=7)
    resp = await clocked.client.get(TOKEN_PATH, headers=FLAVOR)
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"


async def test_instance_id_and_zone_are_served_and_listed(client: TestClient) -> None:
    listing = await (await client.get(f"{V1}/instance/", headers=FLAVOR)).text()
    assert {"id", "zone", "service-accounts/"} <= set(listing.split())
    resp = await client.get(f"{V1}/instance/id", headers=FLAVOR)
    assert resp.status == 200 and (await resp.text()).isdigit()
    assert resp.headers["Metadata-Flavor"] == "Google"
    zone = await (await client.get(f"{V1}/instance/zone", headers=FLAVOR)).text()
    assert zone == "projects/123456/zones/us-central1-a"
    assert (await client.get(f"{V1}/instance/zone")).status == 403  # the flavor header
