#!/usr/bin/env python3
"""How long `credsidecar preflight` takes for a run's 20 paths across three clouds. Prints
figures, asserts nothing.

    .venv/bin/python benchmarks/preflight.py          # from the repository root, ~40 s

Against real processes on 127.0.0.1 (an issuer with the example policy and the sandbox clouds,
see benchmarks/README.md), the wall time from start to exit of one `credsidecar preflight`
process (interpreter, imports, credentials, every check), median of `--runs` (5) after one
untimed run, for the same 20 paths of alice's (7 S3, 7 Cloud Storage, 6 Azure Blob; reads,
writes and work directories; 6 of them denied, so the write probes, the permission tests and
the refusals are all timed):

1. before launch (`--token-file`): the launch token exchanged in the preflight process at the
   issuer and the sandbox's STS, Google STS + IAM Credentials and Entra, then the checks;
2. inside the job: the same paths through a sidecar serving the three clouds, with the
   environment `credsidecar env` prints;
beside `credsidecar preflight --help` (the interpreter and the CLI's imports alone). The target
(issue 12) is < 3 s for the 20 paths against the sandbox. Every process it starts is stopped on
the way out, errors and SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from harness import (
    PY,
    ROOT,
    children,
    job_env,
    machine,
    section,
    start_sidecar,
    start_upstream,
    verdict,
)

TARGET_S = 3.0  # issue 12: 20 paths across three clouds against the sandbox
CLOUDS = "aws,gcp,azure"
# 20 paths, one per line in `--paths-from` form; (d) marks those alice is denied.
PATHS = """\
read s3://alice-data/
read s3://alice-data/in/
read s3://shared-refs/refs/
read s3://bob-data/
write s3://alice-data/out/
work-dir s3://alice-data/work/
write s3://shared-refs/out/
read gs://alice-data/
read gs://alice-data/in/
read gs://shared-refs/refs/
read gs://bob-data/
write gs://alice-data/out/
work-dir gs://alice-data/work/
write gs://shared-refs/out/
read az://sandbox/alice-data/
read az://sandbox/shared-refs/refs/
read az://sandbox/bob-data/
write az://sandbox/alice-data/out/
work-dir az://sandbox/alice-data/work/
write az://sandbox/shared-refs/out/
"""


def preflight_argv(*args: str) -> list[str]:
    return [PY, "-m", "credsidecar", "preflight", *args]


def timed(argv: list[str], env: dict[str, str], runs: int, core: int | None) -> list[float]:
    """Wall seconds of `runs` runs of `argv` (after one untimed run that warms the caches);
    exit 0 or 1 is a result (1: some paths denied, as here), anything else an error."""
    prefix = ["taskset", "-c", str(core)] if core is not None else []
    walls = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run([*prefix, *argv], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        wall = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise RuntimeError(f"preflight exited {done.returncode}: {done.stderr[-2000:]}")
        if i:
            walls.append(wall)
    return walls


def outcome_counts(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*argv, "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    summary = json.loads(done.stdout)["summary"]
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(summary.items()))


def describe(name: str, walls: list[float]) -> tuple[str, str, str, str]:
    median = statistics.median(walls)
    spread = f" (min {min(walls):.2f}, max {max(walls):.2f})"
    return (name, f"{median:.2f} s{spread}", f"< {TARGET_S:.0f} s", verdict(median < TARGET_S))


def main(argv: list[str] | None = None) -> int:
    from tests.support.stack import preflight_flags  # importable once harness set the path

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    has_taskset = shutil.which("taskset") is not None
    core, other = (cores[0], cores[-1]) if has_taskset else (None, None)
    print(f"machine: {machine()}")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    with children(args.keep, "credsidecar-preflight-") as (procs, work):
        with section("upstream: issuer + sandbox"):
            up = start_upstream(procs, work, other)
        paths = work / "paths.txt"
        paths.write_text(PATHS)
        token_file = work / "launch-token"
        token_file.write_text(up.mint("bench-preflight"))
        token_file.chmod(0o600)
        env = {**os.environ}
        help_walls = timed(preflight_argv("--help"), env, args.runs, core)
        with section(f"before launch: 20 paths, {args.runs} runs"):
            before = preflight_argv("--paths-from", str(paths), "--token-file", str(token_file),
                                    *preflight_flags(up.info))  # fmt: skip
            print(f"   outcomes: {outcome_counts(before, env)}")
            rows.append(describe("before launch (--token-file), 20 paths",
                                 timed(before, env, args.runs, core)))  # fmt: skip
        with section(f"in the job: a sidecar for {CLOUDS}, 20 paths, {args.runs} runs"):
            sidecar = start_sidecar(procs, up, work / "sidecar", up.mint("bench-preflight-job"),
                                    other, CLOUDS)  # fmt: skip
            in_job_env = job_env(sidecar)
            in_job = preflight_argv("--paths-from", str(paths), "--azure-blob-url",
                                    up.info["azure"]["blob_url"])  # fmt: skip
            print(f"   outcomes: {outcome_counts(in_job, in_job_env)}")
            rows.append(describe("in the job (sidecar), 20 paths",
                                 timed(in_job, in_job_env, args.runs, core)))  # fmt: skip
    help_median = statistics.median(help_walls)
    rows.append(("`credsidecar preflight --help` (floor)", f"{help_median:.2f} s", "", "-"))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"\nwall time of one preflight process, median of {args.runs} (core {core}):")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    print(f"(children's CPU time in all: {usage.ru_utime + usage.ru_stime:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
