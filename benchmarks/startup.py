#!/usr/bin/env python3
"""Start-up figures: what a job pays at every task start. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/startup.py            # from the repository root, ~30 s

A user running thousands of small tasks runs `credsidecar env` (and, with a per-task wrapper,
starts a sidecar) at every task start, so these costs are paid per task. Against real processes
on 127.0.0.1 (an issuer with the example policy and the sandbox clouds, see benchmarks/README.md)
it measures, each a median of `--runs` (7):

1. the CLI: wall time of `credsidecar --help` and of `credsidecar env --run-dir DIR` (DIR the run
   directory of a ready sidecar), each beside `python -c pass` (the bare interpreter) and the
   ratio to it, and `python -X importtime` for the same command: the total import time, the
   packages whose own modules cost most, and which cloud SDKs and heavy libraries were loaded;
2. the per-job footprint: a sidecar serving all three clouds (`--clouds aws,gcp,azure`) against
   the sandbox, the time from process start to ready (the env file appears in its run
   directory) and its peak RSS (`VmHWM` from /proc/PID/status) when ready and after the job's
   first credentials from each cloud.

Modules are byte-compiled first, as pip does on install (PYTHONDONTWRITEBYTECODE is unset for
the measured commands), so the figures are those of an installed package. Every child runs
pinned to one core (`--core`, default the first this process may use), the
issuer and sandbox to another when there is one. Every process it starts is stopped on the way
out, errors and SIGTERM included.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    PY,
    ROOT,
    Processes,
    Sidecar,
    Upstream,
    children,
    fetch,
    job_env,
    kib_to_mb,
    machine,
    proc_status,
    section,
    start_sidecar,
    start_upstream,
    verdict,
)

# Targets from issue 10 ("Done when").
TARGET_CLI_S = 0.25
TARGET_READY_S = 0.6
TARGET_RSS_MB = 45.0

CLOUDS = "aws,gcp,azure"
# Packages whose presence in a command's imports is worth naming: the cloud SDKs the CLI and
# the endpoints should not load, and the larger libraries behind them.
WATCHED = ("boto3", "botocore", "google", "azure", "msal", "asyncssh", "moto", "aiohttp",
           "joserfc", "cryptography", "uvloop", "jwt")  # fmt: skip
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def credsidecar(*args: str) -> list[str]:
    """The arguments after the interpreter that run `credsidecar ARGS` as a job does: the
    installed console script when there is one, else `-m credsidecar`."""
    script = Path(PY).parent / "credsidecar"
    return [str(script), *args] if script.exists() else ["-m", "credsidecar", *args]


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    return [*(["taskset", "-c", str(core)] if core is not None else []), *argv]


def timed_runs(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds from start to exit of `argv`, and median CPU seconds (user + system)
    it used: on a busy machine the wall time grows with the wait for a core, the CPU time much
    less. Output is discarded; a failure is an error. One untimed run first warms the caches."""
    walls, cpus = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=60)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ImportProfile:
    total_s: float  # the sum of the top-level imports' cumulative times
    heaviest: list[tuple[str, float]]  # top-level package -> ms of its modules' own time
    watched: list[str]  # the WATCHED packages that were imported


def import_profile(argv: list[str]) -> ImportProfile:
    """`argv` with `-X importtime` after the interpreter (argv[0]), parsed."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    total_us = 0
    own_ms: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        package = m.group(4).split(".")[0]
        own_ms[package] = own_ms.get(package, 0.0) + int(m.group(1)) / 1000
        if not m.group(3):  # imported by the program itself, not by another module
            total_us += int(m.group(2))
    heaviest = sorted(own_ms.items(), key=lambda kv: -kv[1])[:5]
    return ImportProfile(total_us / 1e6, heaviest, [p for p in WATCHED if p in own_ms])


@dataclass
class CliFigure:
    name: str
    wall_s: float
    cpu_s: float
    imports: ImportProfile


def cli_figure(name: str, argv: list[str], core: int | None, runs: int) -> CliFigure:
    return CliFigure(name, *timed_runs(pinned(core, argv), runs), import_profile(argv))


def first_credentials(sidecar: Sidecar) -> list[str]:
    """Asks each cloud's endpoint once, as a job's SDK would; returns what failed."""
    env, failed = sidecar.env, []
    asks = []
    if "AWS_CONTAINER_CREDENTIALS_FULL_URI" in env:
        asks.append(("aws", env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                     {"Authorization": env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}))  # fmt: skip
    if "GCE_METADATA_HOST" in env:
        url = f"http://{env['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/"
        asks.append(("gcp", url + "default/token", {"Metadata-Flavor": "Google"}))
    if "IDENTITY_ENDPOINT" in env:
        url = (
            f"{env['IDENTITY_ENDPOINT']}?api-version=2019-08-01&resource=https://storage.azure.com"
        )
        asks.append(("azure", url, {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]}))
    for cloud, url, headers in asks:
        status, body, _ = fetch("GET", url, headers)
        if status != 200:
            failed.append(f"{cloud}: HTTP {status} {body[:200]!r}")
    missing = {"aws", "gcp", "azure"} - {cloud for cloud, _, _ in asks}
    return failed + [f"{cloud}: not in the job's environment" for cloud in sorted(missing)]


@dataclass
class JobRun:
    ready_s: float
    cpu_ready_s: float | None  # CPU time the sidecar used until it was ready
    rss_ready_mb: float | None
    rss_first_mb: float | None  # after the first credentials of each cloud


def job_runs(
    procs: Processes, up: Upstream, work: Path, core: int | None, args: argparse.Namespace
) -> tuple[list[JobRun], CliFigure, list[str]]:
    """Starts `args.runs` sidecars in turn; while the first is up, times `credsidecar env`."""
    token = up.mint("bench-startup")
    runs, problems = [], []
    env_figure: CliFigure | None = None
    for i in range(args.runs):
        sidecar = start_sidecar(procs, up, work / f"job-{i}", token, core, CLOUDS)
        try:
            assert sidecar.ready_wall is not None
            ready = sidecar.ready_wall - sidecar.started_wall
            cpu_ready = cpu_seconds(sidecar.proc.pid)
            rss_ready = kib_to_mb(proc_status(sidecar.proc.pid).get("VmHWM"))
            sidecar.env = job_env(sidecar)
            if i == 0:
                problems = first_credentials(sidecar)
                env = credsidecar("env", "--run-dir", str(sidecar.run_dir))
                env_figure = cli_figure("credsidecar env", [PY, *env], core, args.runs)
            else:
                first_credentials(sidecar)
            rss_first = kib_to_mb(proc_status(sidecar.proc.pid).get("VmHWM"))
            runs.append(JobRun(ready, cpu_ready, rss_ready, rss_first))
            print(
                f"   start {i + 1}: ready {ready * 1000:.0f} ms (CPU {(cpu_ready or 0) * 1000:.0f}"
                f" ms); peak RSS {rss_ready or 0:.1f} MB"
                f" when ready, {rss_first or 0:.1f} MB after the first credentials",
                flush=True,
            )
        finally:
            procs.stop(sidecar.proc)
    assert env_figure is not None
    return runs, env_figure, problems


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def print_cli(figure: CliFigure, bare: CliFigure) -> None:
    imports = figure.imports
    print(
        f"   {figure.name}: {figure.wall_s * 1000:.0f} ms wall, {figure.cpu_s * 1000:.0f} ms CPU"
        f" ({figure.wall_s / bare.wall_s:.1f}x and {figure.cpu_s / max(bare.cpu_s, 1e-3):.1f}x"
        f" `python -c pass`: {bare.wall_s * 1000:.0f} ms wall, {bare.cpu_s * 1000:.0f} ms CPU);"
        f" imports {imports.total_s * 1000:.0f} ms by -X importtime (bare interpreter:"
        f" {bare.imports.total_s * 1000:.0f} ms)"
    )
    print("      heaviest: " + ", ".join(f"{n} {ms:.0f} ms" for n, ms in imports.heaviest))
    print("      loaded: " + (", ".join(imports.watched) or "none of " + ", ".join(WATCHED)))


def table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    print(f"{'figure':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  verdict")
    print("-" * (sum(widths) + 14))
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")


def report(cli: list[CliFigure], bare: CliFigure, runs: list[JobRun], n: int) -> None:
    rows = []
    for f in cli:
        rows += [
            (f"{f.name}: wall (median of {n})",
             f"{f.wall_s * 1000:.0f} ms ({f.wall_s / bare.wall_s:.1f}x bare)",
             f"< {TARGET_CLI_S * 1000:.0f} ms", verdict(f.wall_s < TARGET_CLI_S)),
            ("  its CPU time (user + system)",
             f"{f.cpu_s * 1000:.0f} ms ({f.cpu_s / max(bare.cpu_s, 1e-3):.1f}x bare)", "", "-"),
            ("  its imports (-X importtime)", f"{f.imports.total_s * 1000:.0f} ms", "", "-"),
        ]  # fmt: skip
    ready = statistics.median(r.ready_s for r in runs)
    cpu_ready = median_of([r.cpu_ready_s for r in runs])
    rss_ready = median_of([r.rss_ready_mb for r in runs])
    rss_first = median_of([r.rss_first_mb for r in runs])
    rows += [
        (f"sidecar ({CLOUDS}): start to ready (median of {n})", f"{ready * 1000:.0f} ms",
         f"< {TARGET_READY_S * 1000:.0f} ms", verdict(ready < TARGET_READY_S)),
        ("  its CPU time until ready", f"{(cpu_ready or 0) * 1000:.0f} ms", "", "-"),
        ("sidecar: peak RSS when ready (VmHWM)", f"{rss_ready or 0:.1f} MB",
         f"< {TARGET_RSS_MB:.0f} MB", verdict(rss_ready < TARGET_RSS_MB if rss_ready else None)),
        ("sidecar: peak RSS after first credentials", f"{rss_first or 0:.1f} MB",
         f"< {TARGET_RSS_MB:.0f} MB", verdict(rss_first < TARGET_RSS_MB if rss_first else None)),
    ]  # fmt: skip
    table(rows)
    print(
        f"(bare interpreter, `python -c pass`: {bare.wall_s * 1000:.0f} ms wall, "
        f"{bare.cpu_s * 1000:.0f} ms CPU. Wall times include waiting for a core: on a busy "
        "machine (see the load average above) compare CPU times.)"
    )


def like_an_install() -> None:
    """Measures what an installed package costs: pip byte-compiles a package when it installs
    it, so every module has a cached .pyc. An editable install's sources get theirs on first
    import, unless PYTHONDONTWRITEBYTECODE is set: then each start compiles them again."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        print("note: PYTHONDONTWRITEBYTECODE was set; unset for the measured commands")
    package = ROOT / "src" / "credsidecar"
    if package.is_dir():  # an editable install: compile what changed since the last run
        subprocess.run([PY, "-m", "compileall", "-q", str(package)], check=False, timeout=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--runs", type=int, default=7, help="runs per figure (median)")
    p.add_argument("--core", type=int, help="core for the measured processes (default: first)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    has_taskset = shutil.which("taskset") is not None
    core = (args.core if args.core is not None else cores[0]) if has_taskset else None
    other = cores[-1] if has_taskset else None
    print(f"machine: {machine()}")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if not has_taskset:
        print("taskset is missing (`apt-get install -y util-linux`): nothing is pinned")
    like_an_install()
    with children(args.keep, "credsidecar-startup-") as (procs, work):
        with section(f"the CLI ({args.runs} runs each, core {core})"):
            bare = cli_figure("python -c pass", [PY, "-c", "pass"], core, args.runs)
            help_argv = [PY, *credsidecar("--help")]
            help_figure = cli_figure("credsidecar --help", help_argv, core, args.runs)
        with section("upstream: issuer + sandbox"):
            up = start_upstream(procs, work, other)
        with section(f"per-job footprint: a sidecar for {CLOUDS} ({args.runs} starts)"):
            runs, env_figure, problems = job_runs(procs, up, work, core, args)
        for problem in problems:
            print(f"   first credentials failed: {problem}")
        with section("the CLI, figures"):
            for figure in (help_figure, env_figure):
                print_cli(figure, bare)
    report([help_figure, env_figure], bare, runs, args.runs)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
