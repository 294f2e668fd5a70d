#!/usr/bin/env python3
"""Benchmarks for the sidecar's AWS endpoints (issue "Benchmarks"). Prints figures, asserts nothing.

    .venv/bin/python benchmarks/aws_endpoints.py            # from the repository root, ~95 s

What it does, against real processes on 127.0.0.1 (see benchmarks/README.md; the shared parts
are in benchmarks/harness/):

1. starts an issuer (example policy) and the sandbox (local STS), both pinned to the client core;
2. time to ready: `credsidecar serve --clouds aws` pinned to the server core, from Popen until
   the env file appears in its run directory, several times (median), with a breakdown from its
   audit log;
3. load: one sidecar and a bare aiohttp app returning the same bytes, each pinned to the server
   core, hit by `wrk -t2 -c64 -d10s --latency` pinned to the client core, per AWS path, in two
   interleaved rounds (the best of each is reported);
4. peak RSS (VmHWM) of the sidecar after the load;
5. one renewal under 1,000 concurrent keep-alive clients: a sidecar with `--aws-duration 10`
   renews at about 5 s; STS calls and issuer exchanges are counted across that window.

Every process it starts is stopped on the way out, errors included.
"""

from __future__ import annotations

import sys
import time

import harness
from harness import BARE, BareRoute, Bench, RenewalSpec, Sidecar, Target, http

CONTAINER_PATH = "/v1/credentials/aws"
IMDS_CREDS = "/latest/meta-data/iam/security-credentials/"
IMDS_EXTENDED = "/latest/meta-data/iam/security-credentials-extended/"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105 - a header name


def imds_token(url: str) -> str:
    status, token = http("PUT", url + "/latest/api/token", {TOKEN_TTL_HEADER: "21600"})
    if status != 200:
        raise RuntimeError(f"IMDSv2 token: HTTP {status} {token[:200]!r}")
    return token.decode()


def load_section(bench: Bench, token: str) -> None:
    with harness.section("load: sidecar and bare aiohttp, wrk on the client core"):
        sidecar = harness.start_sidecar(
            bench.procs, bench.upstream, bench.work / "load", token, bench.server_core, "aws"
        )
        sidecar.env = harness.job_env(sidecar)
        bench.figures.rss_idle = harness.kib_to_mb(
            harness.proc_status(sidecar.proc.pid).get("VmRSS")
        )
        url = sidecar.url
        container_headers = {"Authorization": sidecar.secret}
        status, body, headers = harness.fetch("GET", url + CONTAINER_PATH, container_headers)
        if status != 200:
            raise RuntimeError(f"container endpoint: HTTP {status} {body[:300]!r}")
        imds_headers = {TOKEN_HEADER: imds_token(url)}
        status, role = http("GET", url + IMDS_CREDS, imds_headers)
        if status != 200:
            raise RuntimeError(f"IMDS role list: HTTP {status}")
        role_name = role.decode()
        status, _ = http("GET", url + IMDS_CREDS + role_name, imds_headers)
        if status != 200:
            raise RuntimeError(f"IMDS credentials: HTTP {status}")

        base, base_url = harness.start_baseline(
            bench, [BareRoute(CONTAINER_PATH, body, headers["Content-Type"])]
        )
        targets = [
            Target(BARE, "bare aiohttp (same bytes)", base_url + CONTAINER_PATH, is_baseline=True),
            Target(
                "container",
                "container GET " + CONTAINER_PATH,
                url + CONTAINER_PATH,
                container_headers,
            ),
            Target(
                "IMDSv2 credentials",
                "IMDSv2 GET .../security-credentials/<role>",
                url + IMDS_CREDS + role_name,
                imds_headers,
            ),
        ]
        if bench.args.extra_paths:
            lua = bench.work / "put-token.lua"
            lua.write_text(f'wrk.method = "PUT"\nwrk.headers["{TOKEN_TTL_HEADER}"] = "21600"\n')
            targets += [
                Target(
                    "IMDSv2 role list",
                    "IMDSv2 GET .../security-credentials/",
                    url + IMDS_CREDS,
                    imds_headers,
                ),
                Target(
                    "IMDSv2 extended",
                    "IMDSv2 GET .../security-credentials-extended/<role>",
                    url + IMDS_EXTENDED + role_name,
                    imds_headers,
                ),
                # Last in each round: every PUT adds a token to a table of 4,096, so the flood
                # evicts the token the GETs use; each round starts with a fresh one.
                Target(
                    "IMDSv2 token PUT",
                    "IMDSv2 PUT /latest/api/token",
                    url + "/latest/api/token",
                    script=lua,
                ),
            ]

        def new_imds_token() -> None:
            imds_headers[TOKEN_HEADER] = imds_token(url)

        bench.figures.load = harness.run_rounds(
            bench, targets, (base.pid, sidecar.proc.pid), before_round=new_imds_token
        )
        harness.record_rss(bench, sidecar, base)
        bench.procs.stop(base)
        if bench.args.profile:
            new_imds_token()
            harness.profile_targets(bench, sidecar.proc.pid, targets)


def renewal_spec(bench: Bench) -> RenewalSpec:
    up = bench.upstream

    def counters(run: str) -> dict[str, int]:
        return {"STS": up.sts_calls(), "issuer": up.exchanges(run)}

    def headers(sidecar: Sidecar) -> dict[str, str]:
        return {"Authorization": sidecar.secret}

    return RenewalSpec(
        cloud="aws",
        flags=["--aws-duration", "10"],
        path=CONTAINER_PATH,
        headers=headers,
        match={},
        key_field="AccessKeyId",
        counters=counters,
        expected=["STS", "issuer"],
    )


def main() -> int:
    parser = harness.parser((__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--extra-paths",
        action="store_true",
        help="also load the IMDS role list, extended credentials and token PUT",
    )
    args = parser.parse_args()
    t_start = time.monotonic()
    with harness.benchmark(args) as bench:
        token = bench.upstream.mint("bench-1")
        harness.ready_section(bench, token, "aws")
        load_section(bench, token)
        harness.renewal_section(bench, renewal_spec(bench))
    harness.report(bench)
    print(f"total benchmark time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
