"""One renewal under a swarm of keep-alive clients: the client (`harness.child burst`, in its own
process on the client core) and the measurement around it (upstream calls, RSS, interval).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.processes import (
    OBTAINED,
    ROOT,
    child_argv,
    child_env,
    kib_to_mb,
    proc_status,
    read_events,
    wait_until,
)
from harness.stack import Sidecar, job_env, start_sidecar

if TYPE_CHECKING:
    from harness.run import Bench


@dataclass
class BurstResult:
    requests: int = 0
    ok: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    first_wave_ok: int = 0
    first_wave_done: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    window: float = 0.0


async def burst(
    url: str,
    headers: dict[str, str],
    key_field: str,
    clients: int,
    stop_when: Callable[[], bool],
    max_seconds: float,
    tail_seconds: float,
) -> BurstResult:
    """`clients` keep-alive connections, each asking in a loop, all starting at once, until
    `stop_when()` has been true for `tail_seconds` (or `max_seconds` pass). The distinct values
    of the JSON field `key_field` in the answers are counted (old and new credentials)."""
    import aiohttp

    result = BurstResult()
    go = asyncio.Event()
    deadline = [time.monotonic() + max_seconds]

    async def client(session: aiohttp.ClientSession) -> None:
        first = True
        await go.wait()
        while time.monotonic() < deadline[0]:
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                result.requests += 1
                if first:
                    result.first_wave_done += 1
                    first = False
                await asyncio.sleep(0.05)
                continue
            result.latencies.append((time.perf_counter() - t0) * 1000)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.ok += 1
                key = str(json.loads(raw).get(key_field, "?"))
                result.keys[key] = result.keys.get(key, 0) + 1
            if first:
                result.first_wave_done += 1
                result.first_wave_ok += status == 200
                first = False

    async def watch() -> None:
        await go.wait()
        while time.monotonic() < deadline[0]:
            if await asyncio.to_thread(stop_when):
                deadline[0] = min(deadline[0], time.monotonic() + tail_seconds)
                return
            await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        t0 = time.monotonic()
        go.set()
        await asyncio.gather(*tasks)
        result.window = time.monotonic() - t0
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return result


def burst_main(spec_file: str, out: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    audit, match, before = Path(spec["audit"]), spec["match"], int(spec["obtained_before"])

    def renewed() -> bool:
        return len(read_events(audit, OBTAINED, match)) > before

    # At most 4 s: the window opens 1.5 s before the renewal is due and the next one is due
    # about 5 s after it, so the window holds exactly one.
    result = asyncio.run(
        burst(
            spec["url"],
            json.loads(os.environ["BENCH_HEADERS"]),  # may hold a secret: not in argv
            spec["key_field"],
            int(spec["clients"]),
            renewed,
            max_seconds=4.0,
            tail_seconds=0.5,
        )
    )
    Path(out).write_text(json.dumps(asdict(result)))


@dataclass
class RenewalSpec:
    """What differs between clouds in the renewal measurement."""

    cloud: str
    flags: list[str]  # the short-lifetime flag, e.g. ["--aws-duration", "10"]
    path: str  # the endpoint the clients ask
    headers: Callable[[Sidecar], dict[str, str]]
    match: dict[str, str]  # the credentials.obtained lines of the cache being renewed
    key_field: str  # the JSON field that differs between old and new credentials
    counters: Callable[[str], dict[str, int]]  # run -> upstream call counters by name
    expected: list[str]  # the counters that should each move by exactly 1 per renewal


@dataclass
class RenewalResult:
    deltas: dict[str, int]  # counter -> calls in the window
    expected: list[str]
    obtained_in_window: int
    burst: BurstResult
    interval: float | None  # seconds between the two credentials.obtained events
    peak_rss_mb: float | None
    note: str = ""


def measure_renewal(bench: Bench, spec: RenewalSpec) -> RenewalResult:
    run = f"bench-renew-{spec.cloud}"
    up = bench.upstream
    sidecar = start_sidecar(
        bench.procs,
        up,
        bench.work / "renewal",
        up.mint(run),
        bench.server_core,
        spec.cloud,
        *spec.flags,
    )
    try:
        sidecar.env = job_env(sidecar)

        def obtained() -> list[Any]:
            return read_events(sidecar.audit, OBTAINED, spec.match)

        def more_than(seen: int) -> bool:
            return len(obtained()) > seen

        wait_until(obtained, "first credentials", timeout=5)
        while True:
            events = obtained()
            last = events[-1]
            # The cache renews at half the lifetime; the lifetime runs from just before the
            # fetch, so the renewal is due about the midpoint of (obtained, expiry).
            due = (last["ts"] + last["expiry"]) / 2
            if due - time.time() >= 1.0:
                break
            # Too close to open the window before it: wait for this renewal, use the next one.
            seen = len(events)
            wait_until(
                partial(more_than, seen),
                "a renewal",
                sidecar.proc,
                sidecar.log,
                timeout=15,
            )
        delay = due - 1.5 - time.time()
        if delay > 0:
            time.sleep(delay)
        before = spec.counters(run)
        obtained_before = len(obtained())

        # The client runs in its own process on the client core, so it does not steal the
        # sidecar's core and stays out of this process's state.
        spec_file, out = bench.work / "burst-spec.json", bench.work / "burst.json"
        spec_file.write_text(
            json.dumps(
                {
                    "url": sidecar.url + spec.path,
                    "audit": str(sidecar.audit),
                    "match": spec.match,
                    "obtained_before": obtained_before,
                    "clients": bench.args.clients,
                    "key_field": spec.key_field,
                }
            )
        )
        subprocess.run(
            [
                "taskset",
                "-c",
                str(bench.client_core),
                *child_argv("burst", str(spec_file), str(out)),
            ],
            # The headers may hold a secret: in the environment, not in argv.
            env=child_env(BENCH_HEADERS=json.dumps(spec.headers(sidecar))),
            check=True,
            cwd=ROOT,
            timeout=120,
        )
        raw = json.loads(out.read_text())
        raw["statuses"] = {int(k): v for k, v in raw["statuses"].items()}
        result = BurstResult(**raw)
        after = spec.counters(run)
        events = obtained()
        in_window = len(events) - obtained_before
        interval = events[-1]["ts"] - events[-2]["ts"] if len(events) >= 2 else None
        rss = kib_to_mb(proc_status(sidecar.proc.pid).get("VmHWM"))
        note = {0: "no renewal happened inside the window", 1: ""}.get(
            in_window, f"{in_window} renewals inside the window"
        )
        deltas = {k: after.get(k, 0) - before.get(k, 0) for k in {*before, *after}}
        order = {name: i for i, name in enumerate(spec.expected)}
        deltas = {k: deltas[k] for k in sorted(deltas, key=lambda k: (order.get(k, len(order)), k))}
        return RenewalResult(deltas, spec.expected, in_window, result, interval, rss, note)
    finally:
        bench.procs.stop(sidecar.proc)
