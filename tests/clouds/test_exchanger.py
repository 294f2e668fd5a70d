"""Every cloud's exchanger satisfies the one `Exchanger` interface."""

from __future__ import annotations

import aiohttp

from credsidecar.clouds.aws import AwsExchanger, AwsSettings
from credsidecar.clouds.azure import AzureExchanger
from credsidecar.clouds.exchanger import Exchanger
from credsidecar.clouds.gcp import GcpExchanger, GcpSettings
from credsidecar.launch.exchange import DirectToken
from credsidecar.launch.sources import StaticTokenSource


async def test_each_cloud_exchanger_is_an_exchanger_that_names_the_user() -> None:
    supplier = DirectToken(StaticTokenSource("a.b.c"))
    async with aiohttp.ClientSession() as http:
        exchangers: list[Exchanger] = [
            AwsExchanger(AwsSettings(role_arn="arn:aws:iam::123456789012:role/r"), supplier,
                         http, "user alice"),
            GcpExchanger(GcpSettings(audience="//iam.googleapis.com/p"), supplier, http,
                         "user alice"),
            AzureExchanger(supplier, http, "user alice"),
        ]  # fmt: skip
        for exchanger in exchangers:
            assert isinstance(exchanger, Exchanger)
            assert exchanger.description.startswith("user alice ")
