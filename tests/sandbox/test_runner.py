"""start_sandbox: every cloud up, or none left running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from credsidecar.sandbox import runner
from credsidecar.sandbox.gcp.runner import GcpSandbox, start_gcp_sandbox


async def test_a_cloud_failing_to_start_stops_the_clouds_started_before_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS and GCP start, Azure fails: GCP's servers then AWS are stopped before the error
    reaches the caller, so no port stays open."""
    stopped: list[str] = []

    class StartedAws:
        async def stop(self) -> None:
            stopped.append("aws")

    async def start_aws(issuer_url: str, audience: str) -> Any:
        return StartedAws()

    started_gcp: list[GcpSandbox] = []

    async def start_gcp(issuer_url: str) -> GcpSandbox:
        gcp = await start_gcp_sandbox(issuer_url)  # the real stand-ins, on real ports
        real_stop = gcp.stop

        async def stop() -> None:
            stopped.append("gcp")
            await real_stop()

        gcp.stop = stop  # type: ignore[method-assign]
        started_gcp.append(gcp)
        return gcp

    async def start_azure(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no room for the Azure CA")

    monkeypatch.setattr(runner, "start_aws_sandbox", start_aws)
    monkeypatch.setattr(runner, "start_gcp_sandbox", start_gcp)
    monkeypatch.setattr(runner, "start_azure_sandbox", start_azure)

    with pytest.raises(OSError, match="no room for the Azure CA"):
        await runner.start_sandbox("http://127.0.0.1:1", tmp_path)

    assert stopped == ["gcp", "aws"]
    [gcp] = started_gcp
    async with aiohttp.ClientSession() as http:
        for url in (gcp.sts_url, gcp.iam_url, gcp.storage_url):
            with pytest.raises(aiohttp.ClientConnectorError):
                async with http.get(url):
                    pass
