#!/usr/bin/env python3
"""Benchmarks for the sidecar's Azure managed-identity token paths. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/azure_endpoints.py          # from the repository root, ~130 s

The same measurements as aws_endpoints.py (benchmarks/README.md; the shared parts are in
benchmarks/harness/), against the sandbox's Entra stand-in (HTTPS, local CA):

1. issuer (example policy) and sandbox, pinned to the client core; the Entra stand-in issues
   10 s access tokens (`credsidecar sandbox --azure-token-lifetime 10`), since Entra, not the
   client, sets the lifetime;
2. time to ready of `credsidecar serve --clouds azure` (median of several starts): the sidecar
   is ready once the default identity holds an ARM token;
3. load: `wrk -t2 -c64 -d10s --latency` on the client core against the sidecar on the server
   core, for the App Service path (`IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`: Python's
   azure-identity, MSAL, the az CLI) and the IMDS path (`Metadata: true`: Node, Go, Java),
   both for Storage, each beside a bare aiohttp handler returning the same bytes, in
   interleaved rounds (the best of each is reported). With 10 s tokens the sidecar renews
   in the background about every 5 s during the load, as it would every 30-45 minutes;
4. peak RSS (VmHWM) of the sidecar after the load;
5. one renewal of the ARM token (the one fetched before ready) under 1,000 concurrent
   keep-alive clients on the App Service path: calls to the Entra stand-in
   (`/_sandbox/stats`) and issuer exchanges across that window.

Every process it starts is stopped on the way out, errors included.
"""

from __future__ import annotations

import json
import sys
import time

import harness
from credsidecar.endpoints.azure import resource_key
from harness import BareRoute, Bench, RenewalSpec, Sidecar, Target

LIFETIME = 10
STORAGE = "https://storage.azure.com"
APP_SERVICE_PATH = f"/msi/token?api-version=2019-08-01&resource={STORAGE}"
ARM = "https://management.azure.com/"
ARM_PATH = f"/msi/token?api-version=2019-08-01&resource={ARM}"
IMDS_PATH = f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={STORAGE}"
METADATA = {"Metadata": "true"}
BARE_APP_SERVICE = "bare aiohttp (App Service bytes)"
BARE_IMDS = "bare aiohttp (IMDS bytes)"


def app_service_headers(sidecar: Sidecar) -> dict[str, str]:
    return {"X-IDENTITY-HEADER": sidecar.env["IDENTITY_HEADER"]}


def load_section(bench: Bench, token: str) -> None:
    with harness.section("load: sidecar and bare aiohttp, wrk on the client core"):
        sidecar = harness.start_sidecar(
            bench.procs, bench.upstream, bench.work / "load", token, bench.server_core, "azure"
        )
        sidecar.env = harness.job_env(sidecar)
        bench.figures.rss_idle = harness.kib_to_mb(
            harness.proc_status(sidecar.proc.pid).get("VmRSS")
        )
        url = sidecar.url
        secret = app_service_headers(sidecar)
        # The first request for Storage fetches its token upstream (ready needs only ARM's).
        app_body, app_headers = harness.get_ok(url + APP_SERVICE_PATH, secret)
        imds_body, imds_headers = harness.get_ok(url + IMDS_PATH, METADATA)
        print(
            f"   App Service body {len(app_body)} bytes ({app_headers['Content-Type']}), "
            f"IMDS body {len(imds_body)} bytes ({imds_headers['Content-Type']})"
        )
        base, base_url = harness.start_baseline(
            bench,
            [
                # The sidecar computes expires_in per response; the bare handler returns the
                # first answer as fixed bytes of the same size and Content-Type.
                BareRoute(APP_SERVICE_PATH.split("?")[0], app_body, app_headers["Content-Type"]),
                BareRoute(IMDS_PATH.split("?")[0], imds_body, imds_headers["Content-Type"]),
            ],
        )
        targets = [
            Target(BARE_APP_SERVICE, BARE_APP_SERVICE, base_url + APP_SERVICE_PATH,
                   is_baseline=True),
            Target("App Service", "GET /msi/token (X-IDENTITY-HEADER)", url + APP_SERVICE_PATH,
                   secret, baseline=BARE_APP_SERVICE),
            Target(BARE_IMDS, BARE_IMDS, base_url + IMDS_PATH, is_baseline=True),
            Target("IMDS", "GET /metadata/identity/oauth2/token (Metadata: true)",
                   url + IMDS_PATH, dict(METADATA), baseline=BARE_IMDS),
        ]  # fmt: skip
        bench.figures.load = harness.run_rounds(bench, targets, (base.pid, sidecar.proc.pid))
        harness.record_rss(bench, sidecar, base)
        bench.procs.stop(base)
        if bench.args.profile:
            harness.profile_targets(bench, sidecar.proc.pid, targets)
        # Its 10 s tokens would keep it calling Entra through the renewal measurement.
        bench.procs.stop(sidecar.proc)
        bench.figures.notes.append(
            "the token handlers compute expires_in at every response, so their bodies change "
            "each second; the bare aiohttp handlers return one fixed body of the same size "
            f"({len(app_body)} and {len(imds_body)} bytes) with the same Content-Type. Entra "
            f"tokens live {LIFETIME} s here, so the sidecar renews during the load."
        )


def renewal_spec(bench: Bench) -> RenewalSpec:
    up = bench.upstream

    def counters(run: str) -> dict[str, int]:
        stats = up.azure_stats()
        named = {"Entra": stats.pop("entra.token", 0), "issuer": up.exchanges(run)}
        return {**named, **stats}

    return RenewalSpec(
        cloud="azure",
        flags=[],  # the lifetime is the sandbox's (--azure-token-lifetime)
        path=ARM_PATH,
        headers=app_service_headers,
        # The audit names a resource by its one key (no trailing slash), not as it was asked for.
        match={"resource": resource_key(ARM)},
        key_field="access_token",
        counters=counters,
        expected=["Entra", "issuer"],
    )


def main() -> int:
    parser = harness.parser((__doc__ or "").split("\n")[0])
    args = parser.parse_args()
    t_start = time.monotonic()
    with harness.benchmark(args, ("--azure-token-lifetime", str(LIFETIME))) as bench:
        token = bench.upstream.mint("bench-azure-1")
        harness.ready_section(bench, token, "azure")
        load_section(bench, token)
        harness.renewal_section(bench, renewal_spec(bench))
        stats = json.dumps(bench.upstream.azure_stats(), sort_keys=True)
        print(f"   Azure sandbox calls over the whole run: {stats}")
    harness.report(bench)
    print(f"total benchmark time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
