"""Entra refusals, from the sandbox's Entra stand-in (over HTTPS) and the real issuer, read as
sentences that name the user, the run, the identity, the AADSTS cause and the fix (for a missing
federated credential: the issuer, subject and audience it must have)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from credsidecar.clouds.azure import AzureExchanger
from credsidecar.clouds.contracts import AZURE_AUDIENCE, AzureIdentityRef
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, InvalidGrant
from credsidecar.launch import StaticTokenSource
from credsidecar.launch.exchange import FederatedToken, IssuerExchange, TokenSupplier
from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import AZURE_IDENTITIES, AZURE_TENANT_ID
from tests.sandbox.conftest import ServedIssuer, ShiftedClock

IDENTITY = {i.name: i for i in AZURE_IDENTITIES}
STORAGE = "https://storage.azure.com/"
OTHER_GUID = "00000000-1111-2222-3333-444444444444"


class AlicesOwn:
    """Always alice's own Azure identity's token, whichever identity the exchanger names: what
    a misconfigured identity (a wrong client id or tenant) shows Entra."""

    def __init__(self, inner: TokenSupplier) -> None:
        self._inner = inner

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        return await self._inner.token(audience, provider, "alice")


async def supplier(issuer: ServedIssuer, https: aiohttp.ClientSession, run: str = "r1") -> Any:
    return IssuerExchange(issuer.url, StaticTokenSource(await issuer.mint("alice", run)), https)


def ref(name: str = "alice", client_id: str = "", tenant_id: str = AZURE_TENANT_ID) -> Any:
    return AzureIdentityRef(name, tenant_id, client_id or IDENTITY[name].client_id)


async def refusal(
    azure: AzureSandbox, https: aiohttp.ClientSession, tokens: TokenSupplier,
    identity: AzureIdentityRef, resource: str = STORAGE, run: str = "r1",
) -> CredsidecarError:  # fmt: skip
    ex = AzureExchanger(tokens, https, f"user alice (run {run})", azure.authority_url)
    with pytest.raises(CredsidecarError) as info:
        await ex.token(identity, resource)
    assert "eyJ" not in info.value.message  # no token in any message
    return info.value


async def test_no_matching_federated_credential_names_issuer_subject_and_audience_to_add(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    bob = IDENTITY["bob"]
    tokens = AlicesOwn(await supplier(issuer, https))
    error = await refusal(azure, https, tokens, ref("bob"))
    assert isinstance(error, Forbidden)
    assert error.message.startswith(
        f"user alice (run r1) may not use Azure identity 'bob' ({bob.client_id}): no federated "
        f"credential on it matches issuer {issuer.url}, subject credsidecar:azure:alice and "
        f"audience {AZURE_AUDIENCE}; add a federated credential with exactly these three to it "
        "(az identity federated-credential create --identity-name NAME --resource-group GROUP "
        f"--issuer {issuer.url} --subject credsidecar:azure:alice --audiences {AZURE_AUDIENCE}; "
        f"for an app registration, az ad app federated-credential create --id {bob.client_id})"
    )
    assert "Entra said: AADSTS70021: No matching federated identity record" in error.message


async def test_an_unknown_client_id_says_to_check_the_policys_client_and_tenant(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    tokens = AlicesOwn(await supplier(issuer, https))
    error = await refusal(azure, https, tokens, ref(client_id=OTHER_GUID))
    assert isinstance(error, Forbidden)
    assert error.message.startswith(
        f"user alice (run r1) may not use Azure identity 'alice' ({OTHER_GUID}): the app is not "
        f"in tenant {AZURE_TENANT_ID}; check the identity's client_id and tenant_id in the "
        "policy"
    )
    assert "AADSTS700016" in error.message


async def test_an_unknown_tenant_says_to_correct_the_tenant_id(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    tokens = AlicesOwn(await supplier(issuer, https))
    error = await refusal(azure, https, tokens, ref(tenant_id=OTHER_GUID))
    assert isinstance(error, Forbidden)
    assert f"tenant {OTHER_GUID} does not exist; correct the identity's tenant_id" in (
        error.message
    )


async def test_an_assertion_outside_its_time_range_points_at_the_clocks(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    sandbox_clock.advance(7200)
    error = await refusal(azure, https, await supplier(issuer, https), ref())
    assert isinstance(error, InvalidGrant)
    assert "the client assertion is outside its valid time range; check that this host's " in (
        error.message
    )
    assert error.message.startswith("user alice (run r1) may not use Azure identity 'alice'")


async def test_an_unknown_resource_names_the_resource(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    error = await refusal(azure, https, await supplier(issuer, https), ref(),
                          resource="https://nothing.example")  # fmt: skip
    assert isinstance(error, BadRequest)
    assert (
        f"resource 'https://nothing.example' is not known to tenant {AZURE_TENANT_ID}; ask for "
        "a resource tenant"
    ) in error.message


async def test_an_issuer_refusal_names_the_launch_and_the_identity(
    issuer: ServedIssuer, azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    error = await refusal(azure, https, await supplier(issuer, https), ref("bob"))
    assert isinstance(error, BadRequest)  # alice's launch token does not carry bob's identity
    assert error.message.startswith(
        f"user alice (run r1) cannot get credentials for azure identity 'bob' "
        f"({IDENTITY['bob'].client_id}): the issuer refused the exchange: azure identity 'bob' "
        "is not in the launch token of run 'r1' of user 'alice' (it carries alice, node-alice); "
        "select it when the run is launched"
    )
