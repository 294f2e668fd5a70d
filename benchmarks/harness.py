"""What the endpoint benchmarks share (benchmarks/README.md): real processes, wrk, a bare aiohttp
baseline, a burst of keep-alive clients across one renewal, time to ready, RSS and the table.

`aws_endpoints.py` and `gcp_endpoints.py` import this module; it is also started as a child
process by them (`--_baseline`, `--_burst`), so the load and the burst run in their own process
on their own core. Nothing here asserts on timing: figures are printed, verdicts are
information.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
PY = sys.executable
CLI = [PY, "-m", "credsidecar"]
OBTAINED = "credentials.obtained"

# Targets from the issue.
TARGET_RPS = 15_000
TARGET_VS_BARE = 70.0  # % of the bare aiohttp handler
TARGET_P99_MS = 5.0
TARGET_READY_S = 1.5
TARGET_RSS_MB = 100.0


# processes ---------------------------------------------------------------------------------------


class Processes:
    """Every child this benchmark starts; `stop_all` ends each one by its own PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, core: int | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", str(core)] if core is not None else []
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)


def tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_until(
    predicate: Callable[[], object],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 60,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited {proc.returncode}\n{tail(log) if log else ''}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{tail(log) if log else ''}")
        time.sleep(interval)


def fetch(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and response headers."""
    # Only ever the URLs of servers this benchmark started.
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers.items())


def get_ok(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a GET that must answer 200 (a warm-up or a shape check)."""
    status, body, response_headers = fetch("GET", url, headers)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status} {body[:300]!r}")
    return body, response_headers


def http(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    status, body, _ = fetch(method, url, headers, data, timeout)
    return status, body


def http_ok(url: str) -> bool:
    try:
        return http("GET", url, timeout=1)[0] == 200
    except OSError:
        return False


def read_events(path: Path, event: str, match: Mapping[str, object] | None = None) -> list[Any]:
    """The audit records of `event` whose fields equal those in `match`."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event and all(
                record.get(k) == v for k, v in (match or {}).items()
            ):
                out.append(record)
    return out


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def kib_to_mb(value: str | None) -> float | None:
    if not value:
        return None
    return int(value.split()[0]) / 1024


# issuer, sandbox and sidecars -------------------------------------------------------------------


@dataclass
class Upstream:
    issuer_url: str
    issuer_dir: Path
    api_key: str
    info: dict[str, Any]  # the sandbox's --info-file

    @property
    def sts(self) -> str:
        return str(self.info["aws"]["sts_endpoint"])

    @property
    def s3(self) -> str:
        return str(self.info["aws"]["endpoint_url"])

    @property
    def gcp_base(self) -> str:
        """The GCP STS stand-in's base URL (its /_sandbox/ hooks live there and on IAM's)."""
        return str(self.info["gcp"]["sts_url"]).removesuffix("/v1/token")

    def sidecar_args(self, cloud: str) -> list[str]:
        """`credsidecar serve` flags serving only `cloud`, pointed at this sandbox."""
        # Only this cloud: the launch token carries identities for the others too, and they
        # would be fetched from the real clouds.
        return ["--clouds", cloud, *map(str, self.info["sidecar_flags"])]

    def mint(self, run: str, user: str = "alice") -> str:
        body = json.dumps({"user": user, "run": run, "workspace": "genomics"}).encode()
        status, raw = http(
            "POST",
            f"{self.issuer_url}/v1/launch-tokens",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        if status != 201:
            raise RuntimeError(f"minting a launch token failed: HTTP {status} {raw[:300]!r}")
        return str(json.loads(raw)["token"])

    def sts_calls(self) -> int:
        status, raw = http("GET", f"{self.sts}/_sandbox/stats", timeout=5)
        if status != 200:
            raise RuntimeError(f"sandbox stats: HTTP {status}")
        return int(json.loads(raw)["AssumeRoleWithWebIdentity"])

    def gcp_stats(self) -> dict[str, int]:
        """Calls per method of the GCP stand-ins ("sts.token", "iam.generateAccessToken", ...)."""
        status, raw = http("GET", f"{self.gcp_base}/_sandbox/stats", timeout=5)
        if status != 200:
            raise RuntimeError(f"GCP sandbox stats: HTTP {status}")
        return {str(k): int(v) for k, v in json.loads(raw).items()}

    def azure_stats(self) -> dict[str, int]:
        """Calls per method of the Entra stand-in ("entra.token", ...), over its HTTPS."""
        azure = self.info["azure"]
        context = ssl.create_default_context(cafile=azure["ca_file"])
        url = f"{azure['authority_url']}/_sandbox/stats"
        status, raw, _ = fetch("GET", url, timeout=5, context=context)
        if status != 200:
            raise RuntimeError(f"Azure sandbox stats: HTTP {status}")
        return {str(k): int(v) for k, v in json.loads(raw).items()}

    def exchanges(self, run: str) -> int:
        audit = self.issuer_dir / "audit.jsonl"
        return len(read_events(audit, "token.exchanged", {"run": run}))


def start_upstream(procs: Processes, work: Path, core: int, *sandbox_args: str) -> Upstream:
    from credsidecar.issuer.example import free_port, write_example

    issuer_dir = work / "issuer"
    port = free_port()
    config, api_key = write_example(issuer_dir, port)
    url = f"http://127.0.0.1:{port}"
    log = work / "issuer.log"
    proc = procs.start([*CLI, "issuer", "--config", str(config)], log, core)
    wait_until(lambda: http_ok(f"{url}/healthz"), "issuer", proc, log)
    info_file = work / "sandbox.json"
    log = work / "sandbox.log"
    proc = procs.start(
        [*CLI, "sandbox", "--issuer-url", url, "--info-file", str(info_file), *sandbox_args],
        log,
        core,
    )
    wait_until(info_file.exists, "sandbox", proc, log)
    return Upstream(url, issuer_dir, api_key, json.loads(info_file.read_text()))


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    directory: Path
    started_wall: float
    ready_wall: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.directory / "run"

    @property
    def audit(self) -> Path:
        return self.directory / "audit.jsonl"

    @property
    def log(self) -> Path:
        return self.directory / "sidecar.log"

    @property
    def url(self) -> str:
        if "AWS_EC2_METADATA_SERVICE_ENDPOINT" in self.env:
            return self.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
        if "AZURE_POD_IDENTITY_AUTHORITY_HOST" in self.env:
            return self.env["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
        return "http://" + self.env["GCE_METADATA_HOST"]

    @property
    def secret(self) -> str:
        return self.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]


def start_sidecar(
    procs: Processes,
    up: Upstream,
    directory: Path,
    token: str,
    core: int,
    cloud: str,
    *extra: str,
) -> Sidecar:
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "launch-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    argv = [
        *CLI,
        "serve",
        "--token-file",
        str(token_file),
        "--run-dir",
        str(directory / "run"),
        "--audit-log",
        str(directory / "audit.jsonl"),
        *up.sidecar_args(cloud),
        *extra,
    ]
    started = time.time()
    proc = procs.start(argv, directory / "sidecar.log", core)
    sidecar = Sidecar(proc, directory, started)
    env_file = sidecar.run_dir / "env"
    wait_until(env_file.exists, "sidecar ready", proc, sidecar.log, timeout=60, interval=0.002)
    sidecar.ready_wall = time.time()
    return sidecar


def job_env(sidecar: Sidecar) -> dict[str, str]:
    """What `credsidecar env` prints, parsed (export lines only)."""
    done = subprocess.run(
        [*CLI, "env", "--run-dir", str(sidecar.run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=ROOT,
    )
    env = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


# time to ready ----------------------------------------------------------------------------------


@dataclass
class ReadyRun:
    total: float  # Popen -> env file seen
    obtained: float | None  # Popen -> first credentials.obtained (audit)
    listening: float | None  # credentials.obtained -> sidecar.ready (audit)


def measure_ready(
    procs: Processes, up: Upstream, work: Path, token: str, core: int, runs: int, cloud: str
) -> list[ReadyRun]:
    results = []
    for i in range(runs):
        sidecar = start_sidecar(procs, up, work / f"ready-{i}", token, core, cloud)
        try:
            assert sidecar.ready_wall is not None
            total = sidecar.ready_wall - sidecar.started_wall
            wait_until(
                partial(read_events, sidecar.audit, "sidecar.ready"), "audit ready", timeout=5
            )
            obtained = read_events(sidecar.audit, OBTAINED)
            ready = read_events(sidecar.audit, "sidecar.ready")
            t_obt = obtained[0]["ts"] - sidecar.started_wall if obtained else None
            t_listen = ready[0]["ts"] - obtained[0]["ts"] if obtained and ready else None
            results.append(ReadyRun(total, t_obt, t_listen))
        finally:
            procs.stop(sidecar.proc)
    return results


def measure_imports(core: int, runs: int = 5) -> tuple[float, float, list[tuple[str, float]]]:
    """Median wall time of a bare interpreter and of importing what `serve` imports, and the
    packages that cost most by `-X importtime` (each module's own time, summed per top-level
    package, so the figures do not overlap)."""
    modules = "import credsidecar.cli, credsidecar.config, credsidecar.daemon"

    def timed(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", str(core), PY, "-c", code], check=True, cwd=ROOT)
        return time.perf_counter() - t0

    bare = statistics.median(timed("pass") for _ in range(runs))
    full = statistics.median(timed(modules) for _ in range(runs))
    done = subprocess.run(
        ["taskset", "-c", str(core), PY, "-X", "importtime", "-c", modules],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| +(\S+)", line)
        if m:
            root = m.group(2).split(".")[0]
            per_package[root] = per_package.get(root, 0.0) + int(m.group(1)) / 1000
    heaviest = sorted(per_package.items(), key=lambda kv: -kv[1])[:5]
    return bare, full, heaviest


# load with wrk ----------------------------------------------------------------------------------

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


def run_rounds(
    bench: Bench, targets: list[Target], before_round: Callable[[], None] | None = None
) -> dict[str, WrkResult]:
    """Rounds interleave the targets (A B C A B C), so a noisy neighbour hits each alike; the
    best round of each target (fewest errors, then most requests/s) is kept."""
    args = bench.args
    results: dict[str, WrkResult] = {}
    wrk = (bench.client_core, args.threads, args.connections)
    for round_no in range(1, args.rounds + 1):
        if before_round is not None:
            before_round()
        for t in targets:
            if args.warmup > 0:
                run_wrk(t.url, t.headers, *wrk, args.warmup, t.script)
            r = run_wrk(t.url, t.headers, *wrk, args.duration, t.script)
            best = results.get(t.short)
            if best is None or (r.non_2xx, -r.rps) < (best.non_2xx, -best.rps):
                results[t.short] = r
            print(
                f"   {round_no}. {t.label:<50} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:6.2f}"
                f" ms  p99 {r.p99_ms:6.2f} ms  non-2xx {r.non_2xx}"
                + (f"  socket errors: {r.socket_errors}" if r.socket_errors else ""),
                flush=True,
            )
    bench.figures.targets.update({t.short: t for t in targets})
    return results


# where the sidecar spends its time (--profile) --------------------------------------------------


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


# the bare aiohttp baseline ---------------------------------------------------------------------


@dataclass
class BareRoute:
    """One route of the bare app: the exact bytes, content type and extra headers to return."""

    path: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def start_baseline(bench: Bench, routes: list[BareRoute]) -> tuple[subprocess.Popen[bytes], str]:
    """A bare aiohttp app in its own process on the server core; returns it and its base URL
    once every route answers its bytes."""
    spec = bench.work / "baseline.json"
    spec.write_text(
        json.dumps(
            [
                {
                    "path": r.path,
                    "body": r.body.decode("latin-1"),
                    "content_type": r.content_type,
                    "headers": r.headers,
                }
                for r in routes
            ]
        )
    )
    port_file = bench.work / "baseline.port"
    log = bench.work / "baseline.log"
    proc = bench.procs.start(
        [PY, str(HERE), "--_baseline", str(spec), str(port_file)], log, bench.server_core
    )
    wait_until(port_file.exists, "baseline", proc, log, timeout=30)
    url = f"http://127.0.0.1:{port_file.read_text()}"

    def serving(route: BareRoute) -> bool:
        try:  # the port file is written just before the app listens
            return http("GET", url + route.path, timeout=1)[1] == route.body
        except OSError:
            return False

    for r in routes:
        wait_until(partial(serving, r), "baseline serving", proc, log, timeout=30)
    return proc, url


def serve_baseline(spec_file: str, port_file: str) -> None:
    """A bare aiohttp app: no middleware, one handler per route returning fixed bytes."""
    import socket

    from aiohttp import web

    app = web.Application()
    for spec in json.loads(Path(spec_file).read_text()):
        body = spec["body"].encode("latin-1")
        headers = {"Content-Type": spec["content_type"], **spec["headers"]}

        async def handler(
            request: web.Request, body: bytes = body, headers: dict[str, str] = headers
        ) -> web.Response:
            return web.Response(body=body, headers=headers)

        app.router.add_get(spec["path"], handler)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.replace(port_file)
    # The same event loop the sidecar runs on (uvloop when installed), for a like-for-like ratio.
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop | None = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(app, sock=sock, access_log=None, print=None, backlog=1024, loop=loop)


# one renewal under 1,000 clients ---------------------------------------------------------------


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
                PY,
                str(HERE),
                "--_burst",
                str(spec_file),
                str(out),
            ],
            env={**os.environ, "BENCH_HEADERS": json.dumps(spec.headers(sidecar))},
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


# the run ----------------------------------------------------------------------------------------


@dataclass
class Figures:
    load: dict[str, WrkResult] = field(default_factory=dict)
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


def run_children() -> bool:
    """When started as `harness.py --_baseline|--_burst ...`, does that and returns True."""
    if len(sys.argv) > 1 and sys.argv[1] == "--_baseline":
        serve_baseline(sys.argv[2], sys.argv[3])
        return True
    if len(sys.argv) > 1 and sys.argv[1] == "--_burst":
        burst_main(sys.argv[2], sys.argv[3])
        return True
    return False


# report -----------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Linux {platform.release()}; Python {platform.python_version()}"
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("meets" if ok else "MISSES")


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    print(f"== {title}", flush=True)
    t0 = time.monotonic()
    yield
    print(f"   ({time.monotonic() - t0:.1f} s)", flush=True)


Row = tuple[str, str, str, str]


def _load_rows(figures: Figures) -> list[Row]:
    rows: list[Row] = []
    load = figures.load
    for short, r in load.items():
        target = figures.targets.get(short)
        if target is None or target.is_baseline:
            continue
        base = load.get(target.baseline) if target.baseline else None
        bad = f" ({r.non_2xx} non-2xx!)" if r.non_2xx else ""
        rows.append(
            (
                f"{short}: requests/s, 1 core{bad}",
                f"{r.rps:,.0f}",
                f">= {TARGET_RPS:,}",
                verdict(r.rps >= TARGET_RPS and not r.non_2xx),
            )
        )
        if base is not None:
            pct = 100 * r.rps / base.rps if base.rps else 0.0
            rows.append(
                (
                    f"{short}: % of {target.baseline}",
                    f"{pct:.0f} %",
                    f">= {TARGET_VS_BARE:.0f} %",
                    verdict(pct >= TARGET_VS_BARE),
                )
            )
        rows.append(
            (
                f"{short}: p50 / p99 latency",
                f"{r.p50_ms:.2f} / {r.p99_ms:.2f} ms",
                f"p99 <= {TARGET_P99_MS:g} ms",
                verdict(r.p99_ms <= TARGET_P99_MS),
            )
        )
    for short, r in load.items():
        target = figures.targets.get(short)
        if target is not None and target.is_baseline:
            rows.append(
                (
                    f"{short}: requests/s (reference)",
                    f"{r.rps:,.0f}",
                    f"p50/p99 {r.p50_ms:.2f}/{r.p99_ms:.2f} ms",
                    "-",
                )
            )
    return rows


def _renewal_rows(renewal: RenewalResult, clients: int) -> list[Row]:
    expected = [renewal.deltas.get(k, 0) for k in renewal.expected]
    one = renewal.obtained_in_window == 1
    b = renewal.burst
    return [
        (
            f"upstream exchanges per renewal ({' / '.join(renewal.expected)})",
            " / ".join(map(str, expected))
            + ("" if one else f" over {renewal.obtained_in_window} renewals"),
            "exactly 1",
            verdict(all(n == 1 for n in expected) if one else None),
        ),
        (
            f"  first {clients} simultaneous requests ok",
            f"{b.first_wave_ok}/{b.first_wave_done}",
            "all",
            verdict(b.first_wave_ok == b.first_wave_done == clients),
        ),
        (
            "  all requests ok during the renewal window",
            f"{b.ok}/{b.requests}",
            "all",
            verdict(b.ok == b.requests and b.requests > 0),
        ),
    ]


def _mb(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "?"


def report(bench: Bench) -> None:
    figures, args = bench.figures, bench.args
    rows = _load_rows(figures)
    if figures.renewal is not None:
        rows += _renewal_rows(figures.renewal, args.clients)
    if figures.ready is not None:
        rows += [
            (
                "time from process start to ready (median)",
                f"{figures.ready * 1000:.0f} ms",
                f"< {TARGET_READY_S * 1000:.0f} ms",
                verdict(figures.ready < TARGET_READY_S),
            ),
            (
                "  of which: start -> first credentials",
                f"{(figures.ready_obtained or 0) * 1000:.0f} ms",
                "",
                "-",
            ),
            (
                "  interpreter + imports alone (median of 5)",
                f"{(figures.imports or 0) * 1000:.0f} ms",
                "",
                "-",
            ),
        ]
    renewal_rss = figures.renewal.peak_rss_mb if figures.renewal else None
    peaks = [x for x in (figures.rss_hwm, renewal_rss) if x is not None]
    rows += [
        (
            "peak RSS after wrk load (VmHWM)",
            f"{_mb(figures.rss_hwm)} MB",
            f"< {TARGET_RSS_MB:.0f} MB",
            verdict(figures.rss_hwm < TARGET_RSS_MB if figures.rss_hwm is not None else None),
        ),
        (
            f"peak RSS with {args.clients} clients (VmHWM)",
            f"{_mb(renewal_rss)} MB",
            f"< {TARGET_RSS_MB:.0f} MB",
            verdict(max(peaks) < TARGET_RSS_MB if peaks else None),
        ),
        (
            "  RSS idle after start / bare aiohttp peak",
            f"{_mb(figures.rss_idle)} / {_mb(figures.baseline_rss)} MB",
            "",
            "-",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    print(f"{'figure':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  verdict")
    print("-" * (sum(widths) + 14))
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    print(
        f"(wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, keep-alive, "
        f"{args.warmup:g} s warm-up each, best of {args.rounds} interleaved rounds; one run on a "
        "possibly shared machine)"
    )
    for short, r in figures.load.items():
        target = figures.targets.get(short)
        if target is not None and target.is_baseline and r.rps < TARGET_RPS:
            print(
                f"note: the {short} handler itself serves {r.rps:,.0f} req/s on this core, "
                f"below the {TARGET_RPS:,} target; the absolute target is machine-bound here, "
                "the % of bare aiohttp is the portable figure."
            )
    need = args.connections / (TARGET_P99_MS / 1000)
    print(
        f"note: wrk is closed-loop, so mean latency = {args.connections} connections / rate; "
        f"p99 <= {TARGET_P99_MS:g} ms needs more than {need:,.0f} req/s at -c{args.connections}."
    )
    for note in figures.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    if not run_children():
        sys.exit(
            "harness.py is a module of the benchmarks; run aws_endpoints.py or gcp_endpoints.py"
        )
