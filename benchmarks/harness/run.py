"""One benchmark run: its options, the tools it needs, the work directory and children it cleans
up, and the sections every endpoint benchmark shares (time to ready, RSS, one renewal).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import OBTAINED, Processes, kib_to_mb, proc_status
from harness.report import machine, percentile, section
from harness.stack import Sidecar, Upstream, measure_imports, measure_ready, start_upstream
from harness.swarm import RenewalResult, RenewalSpec, measure_renewal
from harness.wrk import Target, WrkResult


@dataclass
class Figures:
    load: dict[str, WrkResult] = field(default_factory=dict)
    cpu_per_request: dict[str, list[float]] = field(default_factory=dict)  # us, one per round
    targets: dict[str, Target] = field(default_factory=dict)
    ready: float | None = None
    ready_obtained: float | None = None
    imports: float | None = None
    rss_hwm: float | None = None
    rss_now: float | None = None
    rss_idle: float | None = None
    baseline_rss: float | None = None
    renewal: RenewalResult | None = None
    notes: list[str] = field(default_factory=list)  # printed under the table


@dataclass
class Bench:
    args: argparse.Namespace
    server_core: int
    client_core: int
    work: Path
    procs: Processes
    figures: Figures = field(default_factory=Figures)
    _upstream: Upstream | None = None

    @property
    def upstream(self) -> Upstream:
        assert self._upstream is not None, "start_upstream first"
        return self._upstream

    def start_upstream(self, *sandbox_args: str) -> Upstream:
        self._upstream = start_upstream(self.procs, self.work, self.client_core, *sandbox_args)
        return self._upstream


def parser(description: str) -> argparse.ArgumentParser:
    """The options every endpoint benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=1, help="seconds of wrk before each")
    p.add_argument(
        "--rounds", type=int, default=2, help="interleaved wrk rounds; the best is reported"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=1000, help="clients during the renewal")
    p.add_argument("--ready-runs", type=int, default=5)
    p.add_argument("--server-core", type=int, help="core for the servers (default: first)")
    p.add_argument("--client-core", type=int, help="core for clients (default: second)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, sample the sidecar with py-spy under the same wrk load",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


@contextlib.contextmanager
def benchmark(args: argparse.Namespace, sandbox_args: tuple[str, ...] = ()) -> Iterator[Bench]:
    """Checks the tools, prints the machine, and stops every child on the way out (errors,
    Ctrl-C and SIGTERM included). Raises SystemExit(2) when wrk or taskset is missing."""
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run `apt-get install -y wrk` (Debian/Ubuntu package `wrk`)"
            ", then run this again.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if shutil.which("taskset") is None:
        print("taskset is missing: `apt-get install -y util-linux`.", file=sys.stderr)
        raise SystemExit(2)
    # A SIGTERM (a CI timeout) unwinds through the `finally` that stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = sorted(os.sched_getaffinity(0))
    server_core = args.server_core if args.server_core is not None else cores[0]
    client_core = args.client_core if args.client_core is not None else cores[-1]
    print(f"machine: {machine()}")
    print(
        f"server core {server_core}, client core {client_core}"
        + (
            "  (ONE core only: clients compete with the server)"
            if server_core == client_core
            else ""
        )
    )
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="credsidecar-bench-"))
    bench = Bench(args, server_core, client_core, work, Processes())
    try:
        with section("upstream: issuer + sandbox (pinned to the client core)"):
            bench.start_upstream(*sandbox_args)
        yield bench
    finally:
        bench.procs.stop_all()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def ready_section(bench: Bench, token: str, cloud: str) -> None:
    """Time to ready of `credsidecar serve --clouds CLOUD`, and what `serve` imports."""
    runs_wanted = bench.args.ready_runs
    with section(f"time to ready ({runs_wanted} starts, --clouds {cloud})"):
        runs = measure_ready(
            bench.procs, bench.upstream, bench.work, token, bench.server_core, runs_wanted, cloud
        )
        bare, imports, heaviest = measure_imports(bench.server_core)
        for i, run in enumerate(runs):
            print(
                f"   start {i + 1}: ready {run.total * 1000:.0f} ms (credentials obtained "
                f"at {(run.obtained or 0) * 1000:.0f} ms, listening "
                f"{(run.listening or 0) * 1000:.0f} ms later)"
            )
        print(
            f"   python -c pass: {bare * 1000:.0f} ms; importing serve's modules: "
            f"{imports * 1000:.0f} ms; heaviest: "
            + ", ".join(f"{n} {ms:.0f} ms" for n, ms in heaviest)
        )
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            print(
                "   note: PYTHONDONTWRITEBYTECODE is set, so modules without a cached .pyc "
                "(an editable install's own sources) are compiled at every start"
            )
        figures = bench.figures
        figures.ready = statistics.median(r.total for r in runs)
        figures.ready_obtained = statistics.median(r.obtained or 0 for r in runs)
        figures.imports = imports


def record_rss(bench: Bench, sidecar: Sidecar, baseline: subprocess.Popen[bytes]) -> None:
    """Peak and current RSS of the loaded sidecar, and the bare app's peak."""
    status = proc_status(sidecar.proc.pid)
    bench.figures.rss_hwm = kib_to_mb(status.get("VmHWM"))
    bench.figures.rss_now = kib_to_mb(status.get("VmRSS"))
    bench.figures.baseline_rss = kib_to_mb(proc_status(baseline.pid).get("VmHWM"))


def renewal_section(bench: Bench, spec: RenewalSpec) -> None:
    clients = bench.args.clients
    flags = " ".join(spec.flags)
    with section(f"one renewal under {clients} concurrent clients ({flags})"):
        renewal = measure_renewal(bench, spec)
        b = renewal.burst
        print(
            f"   window {b.window:.2f} s: {b.requests} requests, {b.ok} ok, statuses "
            f"{b.statuses}, errors {b.errors or 'none'}; first wave {b.first_wave_ok}/"
            f"{b.first_wave_done} ok; distinct {spec.key_field} values served {len(b.keys)}; "
            f"client-side latency p50 {percentile(b.latencies, 50):.1f} ms "
            f"p99 {percentile(b.latencies, 99):.1f} ms (bound by the Python client, "
            f"{b.requests / b.window if b.window else 0:,.0f} req/s)"
        )
        calls = ", ".join(f"{name} {n}" for name, n in renewal.deltas.items())
        print(
            f"   upstream calls in the window: {calls}; {OBTAINED} audit lines: "
            f"{renewal.obtained_in_window}"
            + (
                f"; renewal interval {renewal.interval:.2f} s (expected ~5 s)"
                if renewal.interval
                else ""
            )
            + (f"  NOTE: {renewal.note}" if renewal.note else "")
        )
        bench.figures.renewal = renewal
