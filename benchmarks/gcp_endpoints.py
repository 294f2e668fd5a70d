#!/usr/bin/env python3
"""Benchmarks for the sidecar's GCP metadata-server token paths. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/gcp_endpoints.py            # from the repository root, ~130 s

The same measurements as aws_endpoints.py (benchmarks/README.md; the shared parts are in
benchmarks/harness/), against the sandbox's GCP stand-ins (STS, IAM Credentials):

1. issuer (example policy) and sandbox, pinned to the client core;
2. time to ready of `credsidecar serve --clouds gcp` (median of several starts);
3. load: `wrk -t2 -c64 -d10s --latency` on the client core against the sidecar on the server
   core, for the access token (default scopes) and an ID token, each beside a bare aiohttp
   handler returning the same bytes, in interleaved rounds (the best of each is reported);
4. peak RSS (VmHWM) of the sidecar after the load;
5. one renewal of the default scope set under 1,000 concurrent keep-alive clients
   (`--gcp-lifetime 10`, renewed at about 5 s): calls to the STS and IAM stand-ins
   (`/_sandbox/stats`) and issuer exchanges across that window.

Every process it starts is stopped on the way out, errors included.
"""

from __future__ import annotations

import json
import sys
import time

import harness
from harness import BareRoute, Bench, RenewalSpec, Sidecar, Target

FLAVOR = {"Metadata-Flavor": "Google"}
SA = "/computeMetadata/v1/instance/service-accounts/default"
TOKEN_PATH = f"{SA}/token"
IDENTITY_PATH = f"{SA}/identity?audience=https://bench.example&format=full"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
BARE_TOKEN = "bare aiohttp (token bytes)"  # noqa: S105 - a table label
BARE_IDENTITY = "bare aiohttp (identity bytes)"


def load_section(bench: Bench, token: str) -> None:
    with harness.section("load: sidecar and bare aiohttp, wrk on the client core"):
        sidecar = harness.start_sidecar(
            bench.procs, bench.upstream, bench.work / "load", token, bench.server_core, "gcp"
        )
        sidecar.env = harness.job_env(sidecar)
        bench.figures.rss_idle = harness.kib_to_mb(
            harness.proc_status(sidecar.proc.pid).get("VmRSS")
        )
        url = sidecar.url
        token_body, token_headers = harness.get_ok(url + TOKEN_PATH, FLAVOR)
        # The warm-up request: the first one for an audience fetches the ID token upstream.
        identity_body, identity_headers = harness.get_ok(url + IDENTITY_PATH, FLAVOR)
        if harness.get_ok(url + IDENTITY_PATH, FLAVOR)[0] != identity_body:
            raise RuntimeError("the ID token changed between two requests: not cached?")
        print(
            f"   token body {len(token_body)} bytes ({token_headers['Content-Type']}), "
            f"identity body {len(identity_body)} bytes ({identity_headers['Content-Type']})"
        )
        path_only = IDENTITY_PATH.split("?", 1)[0]
        base, base_url = harness.start_baseline(
            bench,
            [
                # The sidecar computes expires_in per response; the bare handler returns the
                # first answer as fixed bytes (the same size, also with Metadata-Flavor).
                BareRoute(TOKEN_PATH, token_body, token_headers["Content-Type"], dict(FLAVOR)),
                BareRoute(path_only, identity_body, identity_headers["Content-Type"], dict(FLAVOR)),
            ],
        )
        targets = [
            Target(
                BARE_TOKEN, "bare aiohttp (token bytes)", base_url + TOKEN_PATH, is_baseline=True
            ),
            Target(
                "access token",
                "GET .../service-accounts/default/token",
                url + TOKEN_PATH,
                dict(FLAVOR),
                baseline=BARE_TOKEN,
            ),
            Target(
                BARE_IDENTITY,
                "bare aiohttp (identity bytes)",
                base_url + IDENTITY_PATH,
                is_baseline=True,
            ),
            Target(
                "ID token",
                "GET .../default/identity?audience=...&format=full",
                url + IDENTITY_PATH,
                dict(FLAVOR),
                baseline=BARE_IDENTITY,
            ),
        ]
        bench.figures.load = harness.run_rounds(bench, targets, (base.pid, sidecar.proc.pid))
        harness.record_rss(bench, sidecar, base)
        bench.procs.stop(base)
        if bench.args.profile:
            harness.profile_targets(bench, sidecar.proc.pid, targets)
        bench.figures.notes.append(
            "the token handler computes expires_in at every response, so its body changes each "
            "second; the bare aiohttp handler returns one fixed body of the same size "
            f"({len(token_body)} bytes) with the same Content-Type and Metadata-Flavor headers."
        )


def renewal_spec(bench: Bench) -> RenewalSpec:
    up = bench.upstream

    def counters(run: str) -> dict[str, int]:
        stats = up.gcp_stats()
        named = {
            "STS": stats.pop("sts.token", 0),
            "IAM": stats.pop("iam.generateAccessToken", 0),
            "issuer": up.exchanges(run),
        }
        return {**named, **stats}  # any other method (generateIdToken) under its own name

    def headers(sidecar: Sidecar) -> dict[str, str]:
        return dict(FLAVOR)

    return RenewalSpec(
        cloud="gcp",
        flags=["--gcp-lifetime", "10"],
        path=TOKEN_PATH,
        headers=headers,
        match={"kind": "access_token", "key": CLOUD_PLATFORM},
        key_field="access_token",
        counters=counters,
        expected=["STS", "IAM", "issuer"],
    )


def main() -> int:
    parser = harness.parser((__doc__ or "").split("\n")[0])
    args = parser.parse_args()
    t_start = time.monotonic()
    with harness.benchmark(args) as bench:
        token = bench.upstream.mint("bench-gcp-1")
        harness.ready_section(bench, token, "gcp")
        load_section(bench, token)
        harness.renewal_section(bench, renewal_spec(bench))
        stats = json.dumps(bench.upstream.gcp_stats(), sort_keys=True)
        print(f"   GCP sandbox calls over the whole run: {stats}")
    harness.report(bench)
    print(f"total benchmark time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
