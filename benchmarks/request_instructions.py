#!/usr/bin/env python3
"""Instructions per request: the sidecar's AWS, GCP and Azure token paths, each against a bare
aiohttp app returning the same bytes, counted by valgrind's callgrind. Prints figures, asserts
nothing.

    .venv/bin/python benchmarks/request_instructions.py     # from the repository root, ~3 min
    .venv/bin/python benchmarks/request_instructions.py --cloud gcp   # one cloud

Why: the serving-rate target (>= 85 % of bare aiohttp) is a ratio of two wrk runs, and on a
shared 2-core machine those move by +-20 % from one run to the next. The user-space instructions
a request costs do not: a server's rate on a core of its own is inversely proportional to them
(system calls per request are the same for both, checked with `strace -c`: one read, one write
and one or two epoll waits each). Each server runs under callgrind with instrumentation off;
after `--warmup-requests` requests it is switched on for `--requests` requests over 4 keep-alive
connections, then off. The ratio printed is bare / sidecar.

Needs valgrind (`apt-get install -y valgrind`). Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import BareRoute, Bench
from harness.report import TARGET_VS_BARE

CONTAINER_PATH = "/v1/credentials/aws"
GCP_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"  # noqa: S105
FLAVOR = {"Metadata-Flavor": "Google"}
AZURE_IMDS_PATH = ("/metadata/identity/oauth2/token?api-version=2018-02-01"
                   "&resource=https://storage.azure.com")  # fmt: skip
VALGRIND_START_S = 300  # a Python start under callgrind takes tens of seconds here


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def drive(url: str, path: str, headers: dict[str, str], requests: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    conns = [http.client.HTTPConnection(host, int(port), timeout=VALGRIND_START_S)
             for _ in range(4)]  # fmt: skip
    try:
        for i in range(requests):
            conn = conns[i % len(conns)]
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
    finally:
        for conn in conns:
            conn.close()


def instructions(
    bench: Bench, proc: subprocess.Popen[bytes], out: Path, url: str, path: str,
    headers: dict[str, str],
) -> float:  # fmt: skip
    """Instructions per request of `proc` (running under `callgrind(out)`), which is stopped."""
    args = bench.args
    drive(url, path, headers, args.warmup_requests)
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                   capture_output=True)  # fmt: skip
    drive(url, path, headers, args.requests)
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                   capture_output=True)  # fmt: skip
    bench.procs.stop(proc, timeout=VALGRIND_START_S)  # callgrind writes its totals at exit
    total = 0
    save: Path | None = args.save
    for dump in out.parent.glob(out.name + "*"):
        if save is not None:  # for `callgrind_annotate --inclusive=yes FILE`
            save.mkdir(parents=True, exist_ok=True)
            shutil.copy(dump, save / dump.name)
        found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        total += int(found.group(1)) if found else 0
    requests: int = args.requests
    return total / requests


@dataclass(frozen=True)
class Case:
    """One sidecar path counted against a bare app answering the same bytes."""

    cloud: str
    label: str
    path: str  # with its query, if any
    headers: Callable[[harness.Sidecar], dict[str, str]]
    bare_headers: dict[str, str] = field(default_factory=dict)  # those the sidecar also sends


CASES = [
    Case("aws", "AWS container GET " + CONTAINER_PATH, CONTAINER_PATH,
         lambda s: {"Authorization": s.secret}),
    Case("gcp", "GCP access token", GCP_TOKEN_PATH, lambda s: dict(FLAVOR), dict(FLAVOR)),
    Case("azure", "Azure IMDS token", AZURE_IMDS_PATH, lambda s: {"Metadata": "true"}),
]  # fmt: skip


def count_case(bench: Bench, token: str, case: Case) -> list[tuple[str, float]]:
    # The sidecar's answer, fetched from an uninstrumented sidecar, is the bare app's bytes.
    plain = harness.start_sidecar(
        bench.procs, bench.upstream, bench.work / f"plain-{case.cloud}", token,
        bench.server_core, case.cloud,
    )  # fmt: skip
    plain.env = harness.job_env(plain)
    _, body, headers = harness.fetch("GET", plain.url + case.path, case.headers(plain))
    bench.procs.stop(plain.proc)

    out = bench.work / f"bare-{case.cloud}.callgrind"
    route = BareRoute(case.path.split("?")[0], body, headers["Content-Type"], case.bare_headers)
    base, base_url = harness.start_baseline(
        bench, [route], wrapper=callgrind(out), timeout=VALGRIND_START_S
    )
    bare = instructions(bench, base, out, base_url, case.path, {})

    out = bench.work / f"sidecar-{case.cloud}.callgrind"
    sidecar = harness.start_sidecar(
        bench.procs, bench.upstream, bench.work / f"counted-{case.cloud}", token,
        bench.server_core, case.cloud, "--ready-timeout", str(VALGRIND_START_S),
        wrapper=callgrind(out), ready_timeout=VALGRIND_START_S,
    )  # fmt: skip
    sidecar.env = harness.job_env(sidecar)
    counted = instructions(bench, sidecar.proc, out, sidecar.url, case.path, case.headers(sidecar))
    return [(f"bare aiohttp ({case.cloud} bytes)", bare), (case.label, counted)]


def main() -> int:
    parser = harness.parser((__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per server")
    parser.add_argument("--warmup-requests", type=int, default=300, help="requests before counting")
    parser.add_argument(
        "--cloud", choices=[c.cloud for c in CASES], action="append",
        help="count only this cloud's path (repeatable; default: all three)",
    )  # fmt: skip
    parser.add_argument("--save", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: `apt-get install -y valgrind`", file=sys.stderr)
        return 2
    rows: list[tuple[str, float, float]] = []
    with harness.benchmark(args) as bench:
        token = bench.upstream.mint("bench-instr")
        for case in CASES:
            if args.cloud and case.cloud not in args.cloud:
                continue
            (bare_name, bare), (name, count) = count_case(bench, token, case)
            rows += [(bare_name, bare, bare), (name, count, bare)]
    print(f"\n{'server':<40} {'instructions/request':>22} {'bare / this':>12}")
    for name, count, bare in rows:
        print(f"{name:<40} {count:>22,.0f} {100 * bare / count:>11.1f} %")
    print(
        f"(callgrind, {args.requests} requests after {args.warmup_requests} of warm-up, "
        f"4 keep-alive connections; target for the sidecar: >= {TARGET_VS_BARE:.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
