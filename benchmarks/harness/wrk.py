"""Load with wrk: the command line, parsing its output, interleaved rounds over the targets, and
`--profile` (py-spy while wrk runs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.processes import PY

if TYPE_CHECKING:
    from harness.run import Bench


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str | None
    # Server CPU (user + system) per request while wrk ran, when the target names its process:
    # unlike requests/s, this barely moves when other work shares the machine's cores.
    cpu_us_per_request: float | None = None


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return WrkResult(
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        int(total.group(1)),
        int(non.group(1)) if non else 0,
        errors.group(1).strip() if errors else None,
    )


def wrk_argv(
    url: str,
    headers: dict[str, str],
    core: int,
    threads: int,
    connections: int,
    seconds: float,
    script: Path | None = None,
) -> list[str]:
    argv = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(
    url: str,
    headers: dict[str, str],
    core: int,
    threads: int,
    connections: int,
    seconds: float,
    script: Path | None = None,
) -> WrkResult:
    argv = wrk_argv(url, headers, core, threads, connections, seconds, script)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


BARE = "bare aiohttp"


@dataclass
class Target:
    short: str  # the name in the summary table
    label: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None  # a wrk Lua script (the PUT)
    baseline: str | None = BARE  # the short name of the bare target it is compared with
    is_baseline: bool = False


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


def run_rounds(
    bench: Bench,
    targets: list[Target],
    server_pids: tuple[int, int],
    before_round: Callable[[], None] | None = None,
) -> dict[str, WrkResult]:
    """Rounds interleave the targets (A B C A B C), so a noisy neighbour hits each alike; the
    best round of each target (fewest errors, then most requests/s) is kept. `server_pids`: the
    bare app's and the sidecar's processes, whose CPU time per request is recorded too."""
    args = bench.args
    results: dict[str, WrkResult] = {}
    wrk = (bench.client_core, args.threads, args.connections)
    for round_no in range(1, args.rounds + 1):
        if before_round is not None:
            before_round()
        for t in targets:
            if args.warmup > 0:
                run_wrk(t.url, t.headers, *wrk, args.warmup, t.script)
            pid = server_pids[0] if t.is_baseline else server_pids[1]
            cpu_before = cpu_seconds(pid)
            r = run_wrk(t.url, t.headers, *wrk, args.duration, t.script)
            if r.requests:
                r.cpu_us_per_request = (cpu_seconds(pid) - cpu_before) * 1e6 / r.requests
                bench.figures.cpu_per_request.setdefault(t.short, []).append(r.cpu_us_per_request)
            best = results.get(t.short)
            if best is None or (r.non_2xx, -r.rps) < (best.non_2xx, -best.rps):
                results[t.short] = r
            print(
                f"   {round_no}. {t.label:<50} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:6.2f}"
                f" ms  p99 {r.p99_ms:6.2f} ms  non-2xx {r.non_2xx}"
                + (
                    f"  CPU {r.cpu_us_per_request:5.1f} us/req"
                    if r.cpu_us_per_request is not None
                    else ""
                )
                + (f"  socket errors: {r.socket_errors}" if r.socket_errors else ""),
                flush=True,
            )
    bench.figures.targets.update({t.short: t for t in targets})
    return results


def profile_targets(bench: Bench, pid: int, targets: list[Target], top: int = 14) -> None:
    """For each sidecar target: wrk as in the rounds while `py-spy record` samples the sidecar
    (PID `pid`, the Python process itself: `taskset` execs it), then the functions with the
    largest inclusive share of the busy samples of its event-loop thread."""
    pyspy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if pyspy is None:
        print("   --profile: py-spy is not installed (`pip install py-spy`); skipped")
        return
    args = bench.args
    seconds = max(3.0, args.duration)
    for t in targets:
        if t.is_baseline:
            continue
        out = bench.work / f"py-spy-{re.sub(r'[^a-z0-9]+', '-', t.short.lower())}.txt"
        argv = wrk_argv(
            t.url, t.headers, bench.client_core, args.threads, args.connections, seconds, t.script
        )
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            record = [pyspy, "record", "-r", "200", "-d", str(int(seconds) - 2), "-p", str(pid)]
            done = subprocess.run(
                [*record, "-f", "raw", "-o", str(out)],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
        finally:
            stdout, _ = wrk.communicate(timeout=seconds + 60)
        if done.returncode != 0 or not out.exists():
            print(f"   --profile: py-spy failed: {(done.stderr or done.stdout).strip()[-300:]}")
            return
        rate = parse_wrk(stdout).rps
        raw = out.read_text()
        shares, samples = hot_functions(raw)
        print(
            f"   {t.label}: {rate:,.0f} req/s while sampled, {samples} busy samples of the "
            "event-loop thread; inclusive share by function, overall:"
        )
        for name, share in shares[:top]:
            print(f"      {share:5.1f} %  {name}")
        print("     ... and from the endpoint handler down (what the handler itself costs):")
        for name, share in hot_functions(raw, below=ENDPOINT_FRAME)[0][:top]:
            print(f"      {share:5.1f} %  {name}")


# An endpoint handler's frame: credsidecar/endpoints/*.py except the guard around it.
ENDPOINT_FRAME = re.compile(r"\(credsidecar/endpoints/(?!guards\.py)")


def hot_functions(
    raw: str, below: re.Pattern[str] | None = None
) -> tuple[list[tuple[str, float]], int]:
    """Inclusive share of each function in py-spy's raw (collapsed) stacks, as a % of every
    busy sample. Idle thread-pool workers, which py-spy can report as busy, and the frames every
    sample shares are left out; with `below`, only the frames from the first one matching it."""
    per: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "concurrent/futures/thread.py" in stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if below is not None:
            first = next((i for i, f in enumerate(frames) if below.search(f)), len(frames))
            frames = frames[first:]
        for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            per[name] = per.get(name, 0) + n
    if not total:
        return [], 0
    shares = [(k, 100 * v / total) for k, v in per.items() if v < total * 0.97]
    return sorted(shares, key=lambda kv: -kv[1]), total
