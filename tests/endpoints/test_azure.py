"""Azure managed-identity contracts over real HTTP, with a fake exchanger behind the caches."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.cache_family import MAX_PROBATION, MAX_PROTECTED, CacheFamily
from credsidecar.clouds.contracts import AzureIdentityRef, AzureToken
from credsidecar.endpoints.azure import (
    APP_SERVICE_PATH,
    IMDS_PATH,
    LEGACY_APP_SERVICE_PATH,
    MAX_ASKED,
    MAX_ECHOED,
    MAX_RESOURCE_LENGTH,
    AzureEndpoints,
    with_error_fields,
)
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.errors import Forbidden, Unavailable
from tests.support import raw_http
from tests.support.clock import FakeClock
from tests.support.ports import held_port

SECRET = "identity-header-secret"
TENANT = "00000000-0000-4000-8000-000000000001"
ALICE = AzureIdentityRef("alice", TENANT, "00000000-0000-4000-8000-0000000000a2",
                         object_id="11111111-0000-4000-8000-000000000002",
                         resource_id="/subscriptions/s/resourceGroups/g/providers/"
                         "Microsoft.ManagedIdentity/userAssignedIdentities/alice")  # fmt: skip
SHARED = AzureIdentityRef("genomics-pipelines", TENANT, "00000000-0000-4000-8000-0000000000a1")
STORAGE = "https://storage.azure.com/"
STORAGE_KEY = "https://storage.azure.com"  # the one cache key for every spelling


@dataclass
class FakeEntra:
    clock: FakeClock
    asked: list[tuple[str, str]] = field(default_factory=list)
    error: Exception | None = None

    async def fetch(self, key: tuple[str, str]) -> AzureToken:
        self.asked.append(key)
        if self.error:
            raise self.error
        client = {"alice": ALICE, "genomics-pipelines": SHARED}[key[0]].client_id
        expires_at = self.clock.wall() + 3600
        return AzureToken(f"token-{key[0]}-{len(self.asked)}", expires_at, key[1], client)


@dataclass
class Azure:
    client: TestClient
    entra: FakeEntra
    audit: io.StringIO
    clock: FakeClock
    endpoints: AzureEndpoints

    def asked_table(self) -> dict[str, object]:
        return dict(self.endpoints._asked_by_query)


@pytest.fixture
async def azure(aiohttp_client: Callable[..., Any]) -> AsyncIterator[Azure]:
    clock = FakeClock()
    entra, stream = FakeEntra(clock), io.StringIO()
    audit = AuditLog(stream)
    # give_up_after=0: a failed first fetch is answered at once, not retried.
    tokens: CacheFamily[tuple[str, str], AzureToken] = CacheFamily(
        "Azure", entra.fetch, 0, wall=clock.wall, mono=clock.mono, sleep=clock.sleep
    )
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit), decorate=with_error_fields)
    endpoints = AzureEndpoints(tokens, [ALICE, SHARED], SECRET, guard, audit,
                               {"user": "alice", "run": "r1"}, wall=clock.wall)  # fmt: skip
    app = web.Application()
    app.add_routes(guard.routes(endpoints.routes()))
    client = await aiohttp_client(app, server_kwargs=server_kwargs)
    yield Azure(client, entra, stream, clock, endpoints)
    await tokens.close()


def app_service(resource: str = STORAGE, **selector: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"api-version": "2019-08-01", "resource": resource,
                                                **selector}.items())  # fmt: skip
    return f"{APP_SERVICE_PATH}?{query}"


async def test_app_service_token_fields(azure: Azure) -> None:
    resp = await azure.client.get(app_service(), headers={"X-IDENTITY-HEADER": SECRET})
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["access_token"] == "token-alice-1" and body["token_type"] == "Bearer"
    assert body["resource"] == STORAGE and body["client_id"] == ALICE.client_id
    assert isinstance(body["expires_on"], str) and body["expires_on"].isdigit()
    assert isinstance(body["expires_in"], int) and 3590 <= body["expires_in"] <= 3600


async def test_app_service_needs_the_identity_header(azure: Azure) -> None:
    for headers in ({}, {"X-IDENTITY-HEADER": "guess"}):
        resp = await azure.client.get(app_service(), headers=headers)
        assert resp.status == 401
        assert "IDENTITY_HEADER" in (await resp.json())["error_description"]
    assert azure.entra.asked == []


async def test_imds_without_metadata_header_is_400_invalid_request(azure: Azure) -> None:
    resp = await azure.client.get(f"{IMDS_PATH}?api-version=2018-02-01&resource={STORAGE}")
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


async def test_imds_token_fields_are_strings(azure: Azure) -> None:
    resp = await azure.client.get(f"{IMDS_PATH}?api-version=2018-02-01&resource={STORAGE}",
                                  headers={"Metadata": "true"})  # fmt: skip
    body = await resp.json()
    assert body["token_type"] == "Bearer" and body["client_id"] == ALICE.client_id
    assert body["expires_in"].isdigit() and body["expires_on"].isdigit()
    assert int(body["not_before"]) <= int(body["expires_on"])


async def test_one_token_per_identity_and_resource(azure: Azure) -> None:
    headers = {"X-IDENTITY-HEADER": SECRET}
    await azure.client.get(app_service(), headers=headers)
    await azure.client.get(app_service(), headers=headers)
    await azure.client.get(app_service("https://management.azure.com/"), headers=headers)
    assert azure.entra.asked == [("alice", STORAGE_KEY), ("alice", "https://management.azure.com")]


@pytest.mark.parametrize(
    "selector",
    [
        {"client_id": SHARED.client_id},
        {"client_id": SHARED.client_id.upper()},
        {"object_id": ALICE.object_id},
        {"mi_res_id": ALICE.resource_id},
    ],
)
async def test_a_granted_identity_is_selected_by_client_object_or_resource_id(
    azure: Azure, selector: dict[str, str]
) -> None:
    resp = await azure.client.get(app_service(**selector), headers={"X-IDENTITY-HEADER": SECRET})
    body = await resp.json()
    expected = SHARED if "client_id" in selector else ALICE
    assert body["client_id"] == expected.client_id


async def test_an_identity_not_granted_is_refused_clearly(azure: Azure) -> None:
    other = "00000000-0000-4000-8000-0000000000ff"
    resp = await azure.client.get(app_service(client_id=other),
                                  headers={"X-IDENTITY-HEADER": SECRET})  # fmt: skip
    assert resp.status == 400
    body = await resp.json()
    message = body["error_description"]
    assert other in message and ALICE.client_id in message and SHARED.client_id in message
    # the same list as data, which `credsidecar preflight` reads in the job
    assert {(i["name"], i["client_id"]) for i in body["granted_identities"]} == {
        (ALICE.name, ALICE.client_id), (SHARED.name, SHARED.client_id)}  # fmt: skip
    assert azure.entra.asked == []


async def test_transient_failure_is_503_never_400(azure: Azure) -> None:
    azure.entra.error = Unavailable("Entra is unreachable", retry_after=7)
    resp = await azure.client.get(app_service(), headers={"X-IDENTITY-HEADER": SECRET})
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"


async def test_permanent_refusal_is_403_with_entras_explanation(azure: Azure) -> None:
    azure.entra.error = Forbidden("user alice may not use Azure identity 'alice': AADSTS70021")
    resp = await azure.client.get(app_service(), headers={"X-IDENTITY-HEADER": SECRET})
    assert resp.status == 403
    assert "AADSTS70021" in (await resp.json())["error_description"]


async def test_every_error_carries_the_fields_msal_reports(azure: Azure) -> None:
    """MSAL's App Service client shows only `statusCode, message` of an error body."""
    header = {"X-IDENTITY-HEADER": SECRET}
    azure.entra.error = Unavailable("Entra is unreachable for alice", retry_after=7)
    cases = [
        (app_service(), header, 503, "Entra is unreachable for alice"),
        (app_service(), {}, 401, "IDENTITY_HEADER"),  # the guard's refusal
        (app_service(), {**header, "Origin": "http://evil.example"}, 403, "browser"),
        (app_service(client_id="nobody"), header, 400, "'nobody' is not granted"),
    ]
    for path, headers, status, words in cases:
        resp = await azure.client.get(path, headers=headers)
        body = await resp.json()
        assert resp.status == status and body["statusCode"] == str(status), body
        assert words in body["message"] and body["message"] == body["error_description"]


async def test_served_tokens_are_audited_without_the_token(azure: Azure) -> None:
    await azure.client.get(app_service(), headers={"X-IDENTITY-HEADER": SECRET})
    events = [json.loads(line) for line in azure.audit.getvalue().splitlines()]
    served = [e for e in events if e["event"] == "credentials.served"]
    assert served[0]["client_id"] == ALICE.client_id and served[0]["resource"] == STORAGE_KEY
    assert "token-alice" not in azure.audit.getvalue()


async def test_an_identity_header_that_is_not_utf8_is_a_401_not_a_500(azure: Azure) -> None:
    """aiohttp keeps undecodable header bytes as surrogates, which a plain encode() raised on."""
    assert azure.client.port is not None
    resp = await raw_http.get(azure.client.port, app_service().encode(),
                              b"X-IDENTITY-HEADER: \xff" + SECRET.encode())  # fmt: skip
    assert resp.status == 401
    assert azure.entra.asked == []


async def test_spellings_of_one_resource_share_one_token_and_are_echoed(azure: Azure) -> None:
    headers = {"X-IDENTITY-HEADER": SECRET}
    for resource in (STORAGE, STORAGE_KEY, "HTTPS://Storage.Azure.COM/"):
        body = await (await azure.client.get(app_service(resource), headers=headers)).json()
        assert body["resource"] == resource and body["access_token"] == "token-alice-1"
    assert azure.entra.asked == [("alice", STORAGE_KEY)]


async def test_an_overlong_resource_is_a_wrong_request(azure: Azure) -> None:
    resource = "https://x.example/" + "a" * MAX_RESOURCE_LENGTH
    resp = await azure.client.get(app_service(resource), headers={"X-IDENTITY-HEADER": SECRET})
    assert resp.status == 400
    assert f"longer than {MAX_RESOURCE_LENGTH}" in (await resp.json())["error_description"]
    assert azure.entra.asked == []


async def test_many_distinct_resources_do_not_lock_out_the_one_in_use(azure: Azure) -> None:
    """Resources beyond what the family keeps evict those asked for once, not one in use."""
    headers = {"X-IDENTITY-HEADER": SECRET}
    for _ in range(2):
        assert (await azure.client.get(app_service(), headers=headers)).status == 200
    for i in range(2 * (MAX_PROTECTED + MAX_PROBATION)):
        resp = await azure.client.get(app_service(f"https://r{i}.example"), headers=headers)
        assert resp.status == 200, await resp.text()
    body = await (await azure.client.get(app_service(), headers=headers)).json()
    assert body["access_token"] == "token-alice-1"
    assert azure.entra.asked.count(("alice", STORAGE_KEY)) == 1


async def test_a_revoked_run_is_403_for_a_cached_and_a_new_resource_alike(azure: Azure) -> None:
    headers = {"X-IDENTITY-HEADER": SECRET}
    assert (await azure.client.get(app_service(), headers=headers)).status == 200
    azure.entra.error = Forbidden("run 'r1' of user 'alice' was revoked; start a new run")
    await azure.clock.advance(1800)  # the renewal at half-life is refused ...
    resp = await azure.client.get(app_service(), headers=headers)
    assert resp.status == 200  # ... and the token in hand is served until it expires
    await azure.clock.advance(1800)
    for resource in (STORAGE, "https://vault.azure.net"):
        resp = await azure.client.get(app_service(resource), headers=headers)
        body = await resp.json()
        assert resp.status == 403 and body["statusCode"] == "403", body
        assert "was revoked" in body["message"] and "Retry-After" not in resp.headers


def legacy(resource: str = STORAGE, version: str = "2017-09-01", slash: str = "/",
           **selector: str) -> str:  # fmt: skip
    """The App Service 2017-09-01 request (msrestazure adds a slash: MSI_ENDPOINT + "/?...")."""
    query = "&".join(f"{k}={v}" for k, v in {"resource": resource, "api-version": version,
                                                **selector}.items())  # fmt: skip
    return f"{LEGACY_APP_SERVICE_PATH}{slash}?{query}"


@pytest.mark.parametrize("slash", ["", "/"])
async def test_legacy_contract_answers_the_2017_fields_with_an_epoch_expires_on(
    azure: Azure, slash: str
) -> None:
    from azure.identity._credentials.azure_ml import _parse_expires_on

    resp = await azure.client.get(legacy(slash=slash), headers={"secret": SECRET})
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    expiry = int(azure.clock.wall()) + 3600
    assert body == {"access_token": "token-alice-1", "expires_on": str(expiry),
                    "resource": STORAGE, "token_type": "Bearer",
                    "client_id": ALICE.client_id}  # fmt: skip
    # What the clients of this contract do with it: azure-identity's Azure ML parser, MSAL
    # Python's int(), az 2.45's int() (msrestazure hands the dict on unparsed).
    parsed = dict(body)
    _parse_expires_on(parsed)
    assert parsed["expires_on"] == int(body["expires_on"]) == expiry


async def test_legacy_contract_needs_the_secret_header(azure: Azure) -> None:
    for headers in ({}, {"secret": "guess"}, {"X-IDENTITY-HEADER": SECRET}):
        resp = await azure.client.get(legacy(), headers=headers)
        assert resp.status == 401, headers
        body = await resp.json()
        assert "MSI_SECRET" in body["error_description"] and body["statusCode"] == "401"
    # ... and the 2019-08-01 path does not take the 2017 header either.
    resp = await azure.client.get(app_service(), headers={"secret": SECRET})
    assert resp.status == 401
    assert azure.entra.asked == []
    assert SECRET not in azure.audit.getvalue()
    refused = [json.loads(line) for line in azure.audit.getvalue().splitlines()]
    assert "missing or wrong secret header" in {e.get("reason") for e in refused}


@pytest.mark.parametrize("version", ["2019-08-01", "", "2017-09-01x", "9" * 1000])
async def test_legacy_contract_refuses_other_api_versions(azure: Azure, version: str) -> None:
    resp = await azure.client.get(legacy(version=version), headers={"secret": SECRET})
    assert resp.status == 400
    message = (await resp.json())["error_description"]
    assert "api-version=2017-09-01" in message and "IDENTITY_ENDPOINT" in message
    assert len(message) < 200 + MAX_ECHOED  # a long value is not echoed whole
    assert azure.entra.asked == []


async def test_legacy_clientid_selects_a_granted_identity_and_refuses_others(
    azure: Azure,
) -> None:
    resp = await azure.client.get(legacy(clientid=SHARED.client_id), headers={"secret": SECRET})
    assert (await resp.json())["client_id"] == SHARED.client_id
    other = "00000000-0000-4000-8000-0000000000ff"
    resp = await azure.client.get(legacy(clientid=other), headers={"secret": SECRET})
    assert resp.status == 400
    body = await resp.json()
    assert f"identity '{other}' is not granted" in body["message"]
    assert azure.entra.asked == [("genomics-pipelines", STORAGE_KEY)]


async def test_the_audit_names_the_contract_each_token_was_served_through(azure: Azure) -> None:
    await azure.client.get(app_service(), headers={"X-IDENTITY-HEADER": SECRET})
    await azure.client.get(legacy(), headers={"secret": SECRET})
    await azure.client.get(legacy(slash=""), headers={"secret": SECRET})
    events = [json.loads(line) for line in azure.audit.getvalue().splitlines()]
    paths = [e["path"] for e in events if e["event"] == "credentials.served"]
    assert paths == [APP_SERVICE_PATH, LEGACY_APP_SERVICE_PATH]  # one line per token and path
    assert azure.entra.asked == [("alice", STORAGE_KEY)]  # one token for both


async def test_queries_asked_again_get_the_same_answers_and_the_parse_table_stays_bounded(
    azure: Azure,
) -> None:
    headers = {"X-IDENTITY-HEADER": SECRET}
    for _ in range(2):  # the second time from the parsed queries kept
        shared = await (await azure.client.get(app_service(client_id=SHARED.client_id),
                                               headers=headers)).json()  # fmt: skip
        alice = await (await azure.client.get(app_service(), headers=headers)).json()
        assert (shared["client_id"], alice["client_id"]) == (SHARED.client_id, ALICE.client_id)
        missing = await azure.client.get(f"{APP_SERVICE_PATH}?api-version=2019-08-01",
                                         headers=headers)  # fmt: skip
        assert missing.status == 400  # a wrong query is never kept: refused every time
    for i in range(MAX_ASKED + 10):  # a client varying its queries
        resp = await azure.client.get(app_service(f"{STORAGE}?v={i}"), headers=headers)
        assert resp.status in (200, 503)
    endpoints_asked = azure.asked_table()
    assert 0 < len(endpoints_asked) <= MAX_ASKED
