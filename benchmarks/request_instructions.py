#!/usr/bin/env python3
"""Instructions per request: the sidecar's AWS endpoints against a bare aiohttp app returning
the same bytes, counted by valgrind's callgrind. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/request_instructions.py     # from the repository root, ~3 min

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
from pathlib import Path

import harness
from harness import BareRoute, Bench
from harness.report import TARGET_VS_BARE

CONTAINER_PATH = "/v1/credentials/aws"
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
    for dump in out.parent.glob(out.name + "*"):
        found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        total += int(found.group(1)) if found else 0
    requests: int = args.requests
    return total / requests


def main() -> int:
    parser = harness.parser((__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per server")
    parser.add_argument("--warmup-requests", type=int, default=300, help="requests before counting")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: `apt-get install -y valgrind`", file=sys.stderr)
        return 2
    rows: list[tuple[str, float]] = []
    with harness.benchmark(args) as bench:
        token = bench.upstream.mint("bench-instr")
        # The sidecar's answers, fetched from an uninstrumented sidecar, are the bare app's bytes.
        plain = harness.start_sidecar(
            bench.procs, bench.upstream, bench.work / "plain", token, bench.server_core, "aws"
        )
        plain.env = harness.job_env(plain)
        container_headers = {"Authorization": plain.secret}
        _, body, headers = harness.fetch("GET", plain.url + CONTAINER_PATH, container_headers)
        bench.procs.stop(plain.proc)

        out = bench.work / "bare.callgrind"
        base, base_url = harness.start_baseline(
            bench, [BareRoute(CONTAINER_PATH, body, headers["Content-Type"])],
            wrapper=callgrind(out), timeout=VALGRIND_START_S,
        )  # fmt: skip
        rows.append(("bare aiohttp (same bytes)", instructions(bench, base, out, base_url,
                                                                CONTAINER_PATH, {})))  # fmt: skip

        out = bench.work / "sidecar.callgrind"
        sidecar = harness.start_sidecar(
            bench.procs, bench.upstream, bench.work / "counted", token, bench.server_core, "aws",
            "--aws-duration", "3600", "--ready-timeout", str(VALGRIND_START_S),
            wrapper=callgrind(out), ready_timeout=VALGRIND_START_S,
        )  # fmt: skip
        sidecar.env = harness.job_env(sidecar)
        rows.append(("container GET " + CONTAINER_PATH, instructions(
            bench, sidecar.proc, out, sidecar.url, CONTAINER_PATH,
            {"Authorization": sidecar.secret},
        )))  # fmt: skip
    bare = rows[0][1]
    print(f"\n{'server':<40} {'instructions/request':>22} {'bare / this':>12}")
    for name, count in rows:
        print(f"{name:<40} {count:>22,.0f} {100 * bare / count:>11.1f} %")
    print(
        f"(callgrind, {args.requests} requests after {args.warmup_requests} of warm-up, "
        f"4 keep-alive connections; target for the sidecar: >= {TARGET_VS_BARE:.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
