#!/usr/bin/env python3
"""The issuer under a launch storm (issue 14, item 4). Prints figures, asserts nothing.

    .venv/bin/python benchmarks/launch_storm.py --quick           # ~2 min: 1,000 sidecars in 10 s
    .venv/bin/python benchmarks/launch_storm.py --sidecars 1000   # 1,000 sidecars in 60 s, ~6 min
    .venv/bin/python benchmarks/launch_storm.py                   # 1,000 and 10,000; ~9 min

From the repository root. Against real processes on 127.0.0.1 (benchmarks/README.md, "Launch
storm"): N simulated sidecars each make the issuer exchanges a real sidecar makes at start for
AWS, GCP and Azure (`POST /v1/token`, RFC 8693, one per cloud, the three at once), their starts
spread uniformly at random over the window, open loop. In the same run, against:

1. one issuer worker on SQLite (the baseline);
2. all workers (`workers = "auto"`) on SQLite;
3. two replicas, each with all workers, sharing one PostgreSQL (client-side round robin).

Steps: what a real sidecar exchanges (one real `credsidecar serve --clouds aws,gcp,azure`
against the sandbox, checked against the forms the simulated sidecars send); the client
checked against a trivial server at the storm's rate; then per configuration: launch tokens
minted (the platform mints at launch: before the window; its rate reported apart), a closed-loop
capacity probe, each storm, and the renewal steady state of 10,000 running jobs at the rate the
sidecar's renewal schedule gives. A configuration whose feature is not in this tree is reported
as such. Every process it starts is stopped on the way out, errors and SIGTERM included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness.processes import Processes, child_env, read_events, tail, wait_until
from harness.report import percentile, section, verdict
from harness.storm_client import LoadResult, LoadSpec
from harness.storm_stack import (
    Fleet,
    NotAvailable,
    Postgres,
    Usage,
    check_replicas_share_keys,
    start_node,
    usage,
    wait_for_workers,
    write_node_config,
)

WORKSPACE = "genomics"
# Target from the issue: 10,000 jobs x 3 clouds started within 60 s, no error, p99 < 1 s, on
# this 2-core machine with all workers.
TARGET_SIDECARS = 10_000
TARGET_WINDOW_S = 60.0
TARGET_P99_MS = 1000.0
# The client is trusted when it sends on schedule: p99 of (sent - scheduled) under this.
CLIENT_LAG_OK_MS = 50.0
PG_PASSWORD_ENV = "STORM_PG_PASSWORD"  # noqa: S105 - a variable name


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    workers: str | int
    replicas: int
    postgres: bool


CONFIGS = [
    Config("sqlite-1", "1 worker, SQLite (baseline)", 1, 1, False),
    Config("sqlite-all", 'all workers (workers = "auto"), SQLite', "auto", 1, False),
    Config("pg-2x-all", "2 replicas x all workers, PostgreSQL", "auto", 2, True),
]


@dataclass
class Storm:
    sidecars: int
    window: float
    result: LoadResult
    issuer_cpu_s: float
    client_cpu_s: float
    after: Usage
    db_cpu_s: float | None = None  # PostgreSQL's server processes, when there is one
    cpu_split: list[float] = field(default_factory=list)  # per issuer process, in the storm

    @property
    def exchanges(self) -> int:
        return self.result.requests

    @property
    def offered(self) -> float:
        return self.exchanges / self.window if self.window else 0.0

    @property
    def achieved(self) -> float:
        r = self.result
        if r.first_sent is None or r.last_done is None or r.last_done <= r.first_sent:
            return 0.0
        return r.ok / (r.last_done - r.first_sent)

    @property
    def failures(self) -> dict[str, int]:
        bad = {f"HTTP {k}": v for k, v in self.result.statuses.items() if k != "200"}
        return {**bad, **self.result.errors}

    def p(self, q: float) -> float:
        return percentile(self.result.latencies_ms, q)


@dataclass
class Outcome:
    config: Config
    unavailable: str | None = None
    processes: int = 0
    mint_rate: float | None = None
    mint_p99_ms: float | None = None
    capacity: Storm | None = None
    storms: dict[tuple[int, int], Storm] = field(default_factory=dict)  # (sidecars, round)
    renewal: Storm | None = None
    failed: str | None = None


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    procs: Processes
    cores: list[int]
    client_core: int
    client_cores: str  # where the load client runs (taskset -c)
    forms: list[dict[str, str]] = field(default_factory=list)
    user_forms: dict[str, list[int]] = field(default_factory=dict)  # user -> indices in forms

    @property
    def client_prefix(self) -> list[str]:
        """`nice -n N` for the load client: ahead of the issuer on the core they share, so it
        sends on schedule (its CPU time is reported: that much is taken from the issuer)."""
        nice = self.args.client_nice
        return ["nice", "-n", str(nice)] if nice else []

    @property
    def users(self) -> list[str]:
        return list(self.user_forms)


# --- what a sidecar exchanges --------------------------------------------------------------


def sidecar_forms(token: str) -> list[tuple[str, str, dict[str, str]]]:
    """(provider, identity, form without subject_token) of each exchange a sidecar started with
    `--clouds aws,gcp,azure` makes for `token`, built by the sidecar's own code: its settings
    for the token's default grant of each cloud (providers.py) and IssuerExchange's form."""
    from credsidecar.config import SidecarConfig
    from credsidecar.launch.claims import read_claims
    from credsidecar.launch.exchange import EXCHANGE_GRANT, JWT_TOKEN_TYPE
    from credsidecar.launch.grants import AwsGrant, AzureGrant, GcpGrant, identity_urn
    from credsidecar.providers import aws_settings, azure_identity, gcp_settings

    claims = read_claims(token)
    config = SidecarConfig(token_env="UNUSED", issuer_url=claims.issuer)  # noqa: S106
    wanted: list[tuple[str, str | None, str]] = []
    aws = claims.grants.get(AwsGrant)
    settings = aws_settings(config, claims, aws)
    if aws is not None and aws.source == "federation" and settings is not None:
        wanted.append(("aws", settings.identity_name, settings.audience))
    gcp = claims.grants.get(GcpGrant)
    if gcp is not None and gcp.source == "federation":
        g = gcp_settings(config, gcp)
        wanted.append(("gcp", g.identity_name, g.audience))
    azure = claims.grants.get(AzureGrant)
    if azure is not None and azure.source == "federation":
        a = azure_identity(azure)
        wanted.append(("azure", a.name, a.audience))
    out = []
    for provider, name, audience in wanted:
        form = {
            "grant_type": EXCHANGE_GRANT,
            "subject_token_type": JWT_TOKEN_TYPE,
            "audience": audience,
        }
        if name:
            form["resource"] = identity_urn(provider, name)
        out.append((provider, name or "", form))
    return out


def exchanges_section(bench: Bench) -> None:
    """One real sidecar per user against the sandbox; its exchanges (the issuer's audit log)
    must be those the simulated sidecars send."""
    with section("what a sidecar exchanges at start (one real sidecar per user, the sandbox)"):
        procs = Processes()
        try:
            up = harness.start_upstream(procs, bench.work / "calibration", bench.client_core)
            for user in ("alice", "bob"):
                run = f"storm-calibration-{user}"
                token = up.mint(run, user=user)
                simulated = sidecar_forms(token)
                if len(simulated) < 3:
                    print(f"   {user}: {len(simulated)} federated clouds granted; not used")
                    continue
                sidecar = harness.start_sidecar(
                    procs, up, bench.work / "calibration" / user, token, None, "aws,gcp,azure"
                )
                audit = up.issuer_dir / "audit.jsonl"

                def three(audit: Path = audit, run: str = run) -> bool:
                    return len(read_events(audit, "token.exchanged", {"run": run})) >= 3

                wait_until(three, "the sidecar's three exchanges", timeout=30)
                time.sleep(0.5)  # any further exchange would show now
                procs.stop(sidecar.proc)
                real = sorted(
                    (e["provider"], e["identity"], e["audience"])
                    for e in read_events(audit, "token.exchanged", {"run": run})
                )
                mine = sorted((p, n, f["audience"]) for p, n, f in simulated)
                same = "the same" if real == mine else f"DIFFERENT from the simulated {mine}"
                print(f"   {user}: the real sidecar made {len(real)} exchanges ({same}):")
                for provider, name, audience in real:
                    print(f"      {provider:<6} identity {name:<16} audience {audience}")
                if real != mine:
                    raise RuntimeError("the simulated exchanges differ from a real sidecar's")
                bench.user_forms[user] = list(
                    range(len(bench.forms), len(bench.forms) + len(simulated))
                )
                bench.forms += [f for _, _, f in simulated]
        finally:
            procs.stop_all()
        if not bench.user_forms:
            raise RuntimeError("no user of the example policy is granted all three clouds")
        print(
            "   form fields: grant_type, subject_token_type, subject_token (the run's launch "
            "token), audience, resource (urn:credsidecar:identity:PROVIDER:NAME)"
        )


# --- schedules -----------------------------------------------------------------------------


def storm_arrivals(
    bench: Bench, sidecars: int, window: float, runs: int, seed: int
) -> list[tuple[float, int, list[int]]]:
    """Sidecar i belongs to run i % runs and starts at a uniformly random instant in the
    window; it makes its user's three exchanges at once."""
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    users = bench.users
    offsets = sorted(rng.uniform(0, window) for _ in range(sidecars))
    return [
        (offset, i % runs, bench.user_forms[users[(i % runs) % len(users)]])
        for i, offset in enumerate(offsets)
    ]


def renewal_schedule() -> tuple[float, list[str]]:
    """Exchanges a second per running job from the renewal schedule in the code: each cloud's
    credential is renewed at REFRESH_FRACTION of its lifetime, each renewal one exchange."""
    from credsidecar.cache import REFRESH_FRACTION
    from credsidecar.clouds.contracts import AWS_DEFAULT_DURATION
    from credsidecar.config import SidecarConfig
    from credsidecar.sandbox.azure.state import ACCESS_TOKEN_LIFETIME

    gcp = next(f.default for f in dataclasses.fields(SidecarConfig) if f.name == "gcp_lifetime")
    assert isinstance(gcp, int)
    lifetimes = {"aws": AWS_DEFAULT_DURATION, "gcp": gcp, "azure": ACCESS_TOKEN_LIFETIME}
    per_job = sum(1 / (life * REFRESH_FRACTION) for life in lifetimes.values())
    how = [
        f"{cloud} {life} s (renewed every {life * REFRESH_FRACTION:.0f} s)"
        for cloud, life in lifetimes.items()
    ]
    return per_job, how


def renewal_arrivals(
    bench: Bench, rate: float, seconds: float, runs: int, seed: int
) -> list[tuple[float, int, list[int]]]:
    """Renewals of running jobs: independent single exchanges at `rate`, uniformly random
    instants, each for a random run and one of its user's clouds in turn."""
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    users = bench.users
    count = round(rate * seconds)
    out = []
    for i, offset in enumerate(sorted(rng.uniform(0, seconds) for _ in range(count))):
        run = rng.randrange(runs)
        forms = bench.user_forms[users[run % len(users)]]
        out.append((offset, run, [forms[i % len(forms)]]))
    return out


# --- the client ------------------------------------------------------------------------------


def run_client(
    bench: Bench,
    name: str,
    urls: list[str],
    tokens: list[str],
    arrivals: list[tuple[float, int, list[int]]],
    closed: tuple[int, float] = (0, 0.0),
) -> LoadResult:
    """The load client in `--client-procs` processes on the client cores; arrivals are dealt
    out in turn; their results merged."""
    n = bench.args.client_procs
    start_wall = time.time() + 2.0 + 0.5 * n  # time for the children to import and connect
    children = []
    for i in range(n):
        spec = LoadSpec(
            urls=urls,
            tokens=tokens,
            forms=bench.forms,
            arrivals=arrivals[i::n],
            start_wall=start_wall,
            connections=max(1, bench.args.connections // n),
            first_url=i,
            closed_concurrency=max(1, closed[0] // n) if closed[0] else 0,
            closed_seconds=closed[1],
            client=bench.args.client,
        )
        spec_file = bench.work / f"{name}-{i}.json"
        spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
        out = bench.work / f"{name}-{i}.out.json"
        argv = [
            "taskset", "-c", bench.client_cores, *bench.client_prefix,
            sys.executable, "-m", "harness.storm_client", "load", str(spec_file), str(out),
        ]  # fmt: skip
        proc = bench.procs.start(argv, bench.work / f"{name}-{i}.log", None, env=child_env())
        children.append((proc, out, bench.work / f"{name}-{i}.log"))
    last = max((a[0] for a in arrivals), default=0.0) + closed[1]
    merged = LoadResult()
    for proc, out, log in children:
        try:
            proc.wait(timeout=max(0.0, start_wall - time.time()) + last + 120)
        except subprocess.TimeoutExpired:
            bench.procs.stop(proc)
            raise RuntimeError(f"the load client {name} did not finish") from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the load client {name} failed ({proc.returncode}): {tail(log)}")
        merged.merge(LoadResult.from_json(json.loads(out.read_text())))
    return merged


def describe(storm: Storm) -> str:
    r = storm.result
    fails = ", ".join(f"{k} {v}" for k, v in storm.failures.items()) or "none"
    lag = percentile(r.lags_ms, 99)
    line = (
        f"{storm.exchanges:,} exchanges, offered {storm.offered:,.0f}/s, achieved "
        f"{storm.achieved:,.0f}/s; p50 {storm.p(50):,.0f} ms, p99 {storm.p(99):,.0f} ms, "
        f"max {storm.p(100):,.0f} ms; sidecar all-three p99 "
        f"{percentile(r.sidecar_ms, 99):,.0f} ms; errors {fails}; last answer at "
        f"{(r.last_done or 0):.1f} s; client lag p99 {lag:.1f} ms"
        + ("" if lag <= CLIENT_LAG_OK_MS else " (CLIENT BEHIND: figures bound by the client)")
        + f"; CPU: issuer {storm.issuer_cpu_s:.1f} s"
        + (f" ({storm.issuer_cpu_s * 1000 / r.ok:.2f} ms/exchange)" if r.ok else "")
        + f", client {storm.client_cpu_s:.1f} s"
        + (f", PostgreSQL {storm.db_cpu_s:.1f} s" if storm.db_cpu_s is not None else "")
    )
    for status, sample in r.samples.items():
        line += f"\n      first HTTP {status} answer: {sample[:200]}"
    return line


# --- sections --------------------------------------------------------------------------------


def client_check(bench: Bench, rate: float) -> None:
    """The client at the storm's highest rate against a trivial server on the issuer's core."""
    seconds = bench.args.check_seconds
    with section(f"client check: {rate:,.0f} exchanges/s for {seconds:g} s, trivial server"):
        port_file = bench.work / "trivial.port"
        log = bench.work / "trivial.log"
        argv = [sys.executable, "-m", "harness.storm_client", "serve", str(port_file)]
        proc = bench.procs.start(argv, log, bench.cores[0], env=child_env())
        try:
            wait_until(port_file.exists, "trivial server", proc, log, timeout=30)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            wait_until(lambda: _post_ok(url), "trivial server answering", proc, log, timeout=30)
            sidecars = max(1, round(rate * seconds / 3))
            arrivals = storm_arrivals(bench, sidecars, seconds, 1, seed=bench.args.seed)
            cpu0 = usage([proc.pid]).cpu_s
            result = run_client(bench, "check", [url], ["x"], arrivals)
            storm = Storm(
                sidecars,
                seconds,
                result,
                usage([proc.pid]).cpu_s - cpu0,
                result.cpu_user + result.cpu_system,
                usage([proc.pid]),
            )
            print(f"   {describe(storm)}")
            ok = percentile(result.lags_ms, 99) <= CLIENT_LAG_OK_MS and not storm.failures
            print(
                "   the client "
                + ("keeps" if ok else "does NOT keep")
                + f" its schedule at this rate (p99 lag <= {CLIENT_LAG_OK_MS:g} ms, no error); "
                f"client CPU {100 * storm.client_cpu_s / seconds:.0f} % of one core"
            )
        finally:
            bench.procs.stop(proc)


def _post_ok(url: str) -> bool:
    try:
        return harness.http("POST", url + "/v1/token", data=b"a=b", timeout=1)[0] == 200
    except OSError:
        return False


def start_fleet(bench: Bench, config: Config, postgres: Postgres | None) -> Fleet:
    """The configuration's issuers, checked to do what it asks (else NotAvailable)."""
    from tests.support.ports import candidate_port

    multi = len(bench.cores) > 1
    if config.workers == 1 and multi:
        cores = str(bench.cores[0])  # a core of its own; the client has the other
    else:
        cores = ",".join(map(str, bench.cores))
    store, env = "", None
    if postgres is not None:
        store = f'[store]\nurl = "{postgres.url}"\n'
        store += f'password_env = "{PG_PASSWORD_ENV}"\n'
        env = {**os.environ, PG_PASSWORD_ENV: postgres.password}
    nodes = []
    first = bench.work / config.key / "node-1"
    api_key = ""
    for i in range(config.replicas):
        directory = bench.work / config.key / f"node-{i + 1}"
        path, key = write_node_config(
            directory, candidate_port(), config.workers, store, None if i == 0 else first
        )
        api_key = api_key or key
        nodes.append(start_node(bench.procs, directory, path, cores, env))
    fleet = Fleet(config.key, nodes, api_key)
    print(f"   issuer processes pinned to cores {cores}; client on cores {bench.client_cores}")
    if config.workers != 1:
        want = len(bench.cores)
        for node in nodes:
            count = wait_for_workers(node, want)
            if count < want:
                raise NotAvailable(
                    f'workers = "{config.workers}" was accepted but the issuer runs {count} '
                    f"process(es), not {want}: worker processes are not in this tree"
                )
    if postgres is not None:
        try:
            tables = postgres.tables()
        except Exception as exc:  # any failure: the database was not used
            raise NotAvailable(f"PostgreSQL could not be read ({exc})") from exc
        if tables == 0:
            raise NotAvailable(
                "the issuer accepted [store] url but created nothing in PostgreSQL: the "
                "PostgreSQL store is not in this tree"
            )
        fleet.notes.append(f"{tables} tables in PostgreSQL")
    if config.replicas > 1:
        user = bench.users[0]
        check_replicas_share_keys(fleet, user, WORKSPACE, bench.forms[bench.user_forms[user][0]])
    return fleet


def mint_tokens(bench: Bench, fleet: Fleet, runs: int, outcome: Outcome) -> list[str]:
    """One launch token per run (round robin over replicas), 16 at a time; the rate apart."""
    users = bench.users

    def mint(i: int) -> tuple[str, float]:
        t0 = time.perf_counter()
        token = fleet.mint(
            f"storm-{fleet.key}-run-{i}", users[i % len(users)], WORKSPACE, i % len(fleet.nodes)
        )
        return token, (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        minted = list(pool.map(mint, range(runs)))
    elapsed = time.perf_counter() - t0
    outcome.mint_rate = runs / elapsed
    outcome.mint_p99_ms = percentile([ms for _, ms in minted], 99)
    print(
        f"   minted {runs} launch tokens (one per run, users {', '.join(users)}) in "
        f"{elapsed:.2f} s: {outcome.mint_rate:,.0f}/s, p99 {outcome.mint_p99_ms:.0f} ms "
        "(16 at a time from one Python process: a lower bound)"
    )
    return [t for t, _ in minted]


def load(
    bench: Bench,
    live: Live,
    name: str,
    arrivals: list[tuple[float, int, list[int]]],
    sidecars: int,
    window: float,
    closed: tuple[int, float] = (0, 0.0),
) -> Storm:
    fleet, postgres = live.fleet, live.postgres
    db = postgres.pids() if postgres is not None else []
    before, db_before = usage(fleet.pids), usage(db).cpu_s
    result = run_client(bench, f"{fleet.key}-{name}", fleet.urls, live.tokens, arrivals, closed)
    after = usage(fleet.pids)
    return Storm(
        sidecars,
        window,
        result,
        after.cpu_s - before.cpu_s,
        result.cpu_user + result.cpu_system,
        after,
        usage(db).cpu_s - db_before if db else None,
        [cpu - before.cpu_by_pid.get(pid, 0.0) for pid, cpu in after.cpu_by_pid.items()],
    )


@dataclass
class Live:
    """A configuration whose issuers are running, with its launch tokens."""

    outcome: Outcome
    fleet: Fleet
    postgres: Postgres | None
    tokens: list[str]


def start_config(bench: Bench, config: Config, runs: int) -> tuple[Outcome, Live | None]:
    """The configuration's issuers (None when not available or broken) and its tokens."""
    outcome = Outcome(config)
    postgres: Postgres | None = None
    fleet: Fleet | None = None
    with section(f"start: {config.title}"):
        try:
            if config.postgres:
                postgres = Postgres()
            fleet = start_fleet(bench, config, postgres)
            outcome.processes = usage(fleet.pids).processes
            print(f"   {outcome.processes} issuer process(es); " + "; ".join(fleet.notes))
            tokens = mint_tokens(bench, fleet, runs, outcome)
        except NotAvailable as exc:
            outcome.unavailable = str(exc)
            print(f"   not available in this tree: {exc}")
        except (RuntimeError, OSError) as exc:  # broken, not missing: said, and exit 1 at the end
            outcome.unavailable = outcome.failed = f"FAILED to start: {exc}"
            print(f"   {outcome.failed}")
        if outcome.unavailable or fleet is None:
            _stop_fleet(bench, fleet, postgres)
            return outcome, None
    return outcome, Live(outcome, fleet, postgres, tokens)


def run_phases(bench: Bench, lives: list[Live], runs: int, renewal_rate: float) -> None:
    """Each phase against every configuration in turn (a noisy neighbour then hits each
    alike); the configurations not under load sit idle."""
    args = bench.args
    if args.capacity_seconds > 0:
        conc, seconds = args.capacity_concurrency, args.capacity_seconds
        with section(f"capacity probe: closed loop, {conc} exchanges in flight, {seconds:g} s"):
            arrivals = storm_arrivals(bench, 100, 1.0, runs, args.seed)
            for live in lives:
                c = live.outcome.capacity = load(
                    bench, live, "capacity", arrivals, 0, seconds, (conc, seconds)
                )
                print(
                    f"   {live.outcome.config.title}: {c.result.ok / seconds:,.0f} exchanges/s, "
                    f"p50 {c.p(50):.0f} ms, p99 {c.p(99):.0f} ms, errors {c.failures or 'none'}"
                )
    for n, round_no in ((n, r) for n in args.sidecars for r in range(1, args.rounds + 1)):
        head = f"launch storm: {n:,} sidecars x 3 exchanges over {args.window:g} s"
        with section(head + (f", round {round_no}" if args.rounds > 1 else "")):
            arrivals = storm_arrivals(bench, n, args.window, runs, args.seed + round_no - 1)
            for live in lives:
                storm = live.outcome.storms[n, round_no] = load(
                    bench, live, f"{n}-{round_no}", arrivals, n, args.window
                )
                print(f"   {live.outcome.config.title}: {describe(storm)}")
                split = " + ".join(f"{c:.1f}" for c in storm.cpu_split)
                print(
                    f"      issuer: {storm.after.processes} processes, VmHWM sum "
                    f"{storm.after.hwm_mb:.0f} MB, PSS sum now {storm.after.pss_mb:.0f} MB; "
                    f"CPU s by process (first the one started): {split}"
                )
    if args.renewal_seconds > 0:
        seconds = args.renewal_seconds
        title = (
            f"renewal steady state: {args.renewal_jobs:,} running jobs, {renewal_rate:.1f} "
            f"exchanges/s for {seconds:g} s"
        )
        with section(title):
            arrivals = renewal_arrivals(bench, renewal_rate, seconds, runs, args.seed)
            for live in lives:
                r = live.outcome.renewal = load(
                    bench, live, "renewal", arrivals, args.renewal_jobs, seconds
                )
                print(f"   {live.outcome.config.title}: {describe(r)}")


def _stop_fleet(bench: Bench, fleet: Fleet | None, postgres: Postgres | None) -> None:
    if fleet is not None:
        for node in fleet.nodes:
            bench.procs.stop(node.proc)
    if postgres is not None:
        postgres.stop()


# --- the report ------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base or math.isnan(value) or math.isnan(base):
        return "-"
    return f"x{value / base:.2f}"


def report(bench: Bench, outcomes: list[Outcome], renewal_rate: float) -> None:
    args = bench.args
    base = next((o for o in outcomes if o.config.key == "sqlite-1" and not o.unavailable), None)
    print("\n== summary (ratios: to the 1-worker SQLite baseline of this run)")
    head = (
        f"{'configuration':<38} {'sidecars':>8} {'offered/s':>9} {'achieved/s':>15} "
        f"{'p50 ms':>13} {'p99 ms':>15} {'ready p99':>9} {'errors':>7} {'CPU ms/exch':>11} "
        f"{'RSS MB':>13}"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        if o.unavailable:
            print(f"{o.config.title:<38} {o.failed or 'not available in this tree'}")
            continue
        rows: list[tuple[str, Storm, Storm | None]] = []
        if o.capacity is not None:
            rows.append(("capacity", o.capacity, base.capacity if base else None))
        rows += [
            (
                f"{n:,}" + (f" #{r}" if args.rounds > 1 else ""),
                s,
                base.storms.get((n, r)) if base else None,
            )
            for (n, r), s in o.storms.items()
        ]
        if o.renewal is not None:
            rows.append(("renewal", o.renewal, base.renewal if base else None))
        for label, s, b in rows:
            closed = label == "capacity"
            rate = s.result.ok / s.window if closed else s.achieved
            brate = (b.result.ok / b.window if closed else b.achieved) if b else None
            cpu = s.issuer_cpu_s * 1000 / s.result.ok if s.result.ok else float("nan")
            rss = f"{s.after.hwm_mb:.0f} {_ratio(s.after.hwm_mb, b.after.hwm_mb if b else None)}"
            print(
                f"{o.config.title:<38} {label:>8} "
                f"{'closed' if closed else f'{s.offered:,.0f}':>9} "
                f"{f'{rate:,.0f} {_ratio(rate, brate)}':>15} "
                f"{f'{s.p(50):,.0f} {_ratio(s.p(50), b.p(50) if b else None)}':>13} "
                f"{f'{s.p(99):,.0f} {_ratio(s.p(99), b.p(99) if b else None)}':>15} "
                f"{'-' if closed else f'{percentile(s.result.sidecar_ms, 99):,.0f}':>9} "
                f"{sum(s.failures.values()):>7} {cpu:>11.2f} "
                f"{rss:>13}"
            )
        if o.mint_rate is not None:
            mint = f"{o.mint_rate:,.0f} {_ratio(o.mint_rate, base.mint_rate if base else None)}"
            print(f"{'':<38} {'mint':>8} {'closed':>9} {mint:>15} {'':>13} {o.mint_p99_ms:>15,.0f}")
    print()
    target_n = TARGET_SIDECARS
    if target_n not in args.sidecars or args.window != TARGET_WINDOW_S:
        print(
            f"target ({target_n:,} x 3 in {TARGET_WINDOW_S:g} s, no error, p99 < 1 s): - "
            f"(not run: needs --sidecars {target_n} --window {TARGET_WINDOW_S:g})"
        )
    for o, round_no in ((o, r) for o in outcomes for r in range(1, args.rounds + 1)):
        title = (
            f"target ({target_n:,} x 3 in {TARGET_WINDOW_S:g} s, no error, p99 < 1 s), "
            + o.config.title
            + (f", round {round_no}" if args.rounds > 1 else "")
            + (" (for comparison: the target is for all workers)" if o.config.workers == 1 else "")
        )
        if o.unavailable:
            print(f"{title}: - (not available in this tree)")
            continue
        storm = o.storms.get((target_n, round_no))
        if storm is None or args.window != TARGET_WINDOW_S:
            continue
        r = storm.result
        in_time = (r.last_done or 0) <= TARGET_WINDOW_S + TARGET_P99_MS / 1000
        ok = not storm.failures and storm.p(99) < TARGET_P99_MS and in_time
        print(
            f"{title}: {verdict(ok)} (errors {sum(storm.failures.values())}, p99 "
            f"{storm.p(99):,.0f} ms, last answer at {(r.last_done or 0):.1f} s)"
        )
        if r.ok and o.config.workers != 1:
            per = storm.issuer_cpu_s / r.ok
            print(
                f"   by the issuer's CPU per exchange in that storm ({per * 1000:.2f} ms), "
                f"{len(bench.cores)} cores with no client and no neighbour would serve about "
                f"{len(bench.cores) / per:,.0f} exchanges/s (the target needs "
                f"{target_n * 3 / TARGET_WINDOW_S:,.0f}/s): an estimate, not a measurement"
            )
    per_hour = renewal_rate / max(1, args.renewal_jobs) * 3600
    print(
        f"renewal steady state: {args.renewal_jobs:,} jobs, {renewal_rate:.2f} exchanges/s in "
        f"total ({per_hour:.1f} per job an hour)"
    )
    print(
        "p50/p99: of the exchanges answered 200, from each sidecar's scheduled start (client "
        "lag included). achieved/s: 200s over first send to last answer (an open loop under "
        "capacity achieves what it is offered). capacity: closed loop. RSS: sum of VmHWM over "
        "the issuer's processes (shared library pages counted in each; the PSS "
        "sum is printed per storm). CPU: issuer user+system time per 200 answer. ready p99: a "
        "sidecar's three exchanges all answered 200, from its start. mint: launch tokens, 16 at "
        "a time."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--sidecars", type=int, nargs="+", default=[1000, 10_000], help="storm sizes (1000 10000)"
    )
    p.add_argument("--window", type=float, default=60.0, help="s over which sidecars start (60)")
    p.add_argument(
        "--rounds", type=int, default=1, help="each storm this many times, configurations in turn"
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one configuration at a time (started, loaded, stopped) instead of side by side",
    )
    p.add_argument(
        "--quick", action="store_true", help="1,000 sidecars over 10 s, renewal 10 s, check 5 s"
    )
    p.add_argument(
        "--configs",
        default=",".join(c.key for c in CONFIGS),
        help=f"comma-separated subset of {', '.join(c.key for c in CONFIGS)}",
    )
    p.add_argument("--tasks-per-run", type=int, default=100, help="sidecars sharing a token")
    p.add_argument("--renewal-jobs", type=int, default=10_000)
    p.add_argument("--renewal-seconds", type=float, default=30.0, help="0: skip")
    p.add_argument("--capacity-seconds", type=float, default=5.0, help="0: skip the probe")
    p.add_argument("--capacity-concurrency", type=int, default=64)
    p.add_argument("--check-seconds", type=float, default=10.0, help="the client check")
    p.add_argument("--connections", type=int, default=4096, help="client connection bound")
    p.add_argument("--client-procs", type=int, default=1)
    p.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the load client's HTTP: by hand over asyncio streams (raw, lean) or aiohttp's",
    )
    p.add_argument("--client-cores", help="taskset -c list for the client (default: last core)")
    p.add_argument(
        "--client-nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="niceness of the load client (-10 as root: it keeps its schedule on a shared core)",
    )
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.sidecars, args.window = [1000], 10.0
        args.renewal_seconds, args.check_seconds, args.capacity_seconds = 10.0, 5.0, 3.0
    keys = [c.key for c in CONFIGS]
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in args.configs if k not in keys]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(keys)}")
    return args


def main() -> int:
    args = parse_args()
    t_start = time.monotonic()
    if shutil.which("taskset") is None:
        print("taskset is missing: `apt-get install -y util-linux`.", file=sys.stderr)
        return 2
    cores = sorted(os.sched_getaffinity(0))
    print(f"machine: {harness.machine()}")
    la = os.getloadavg()
    print(f"load average before: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    print(
        f"cores: {cores}; the 1-worker issuer on core {cores[0]}, the client on cores "
        f"{args.client_cores or cores[-1]}; 'all workers' issuers on every core, sharing them "
        f"with the client (its CPU time is printed); the client at nice {args.client_nice}"
        + (" (ONE core only: everything shares it)" if len(cores) == 1 else "")
    )
    runs = math.ceil(max([*args.sidecars, args.renewal_jobs]) / args.tasks_per_run)
    per_job, how = renewal_schedule()
    renewal_rate = per_job * args.renewal_jobs
    print(
        f"launch: runs of {args.tasks_per_run} tasks sharing their run's launch token "
        f"({runs} runs); starts uniformly random over {args.window:g} s, open loop"
    )
    print(
        f"renewal schedule: {', '.join(how)}: {per_job * 3600:.1f} exchanges per job an hour, "
        f"{renewal_rate:.1f}/s for {args.renewal_jobs:,} jobs",
        flush=True,
    )
    with harness.children(args.keep, "credsidecar-storm-") as (procs, work):
        client_cores = args.client_cores or str(cores[-1])
        bench = Bench(args, work, procs, cores, cores[-1], client_cores)
        exchanges_section(bench)
        top_rate = max(args.sidecars) * len(bench.forms[: len(bench.user_forms[bench.users[0]])])
        client_check(bench, top_rate / args.window)
        outcomes: list[Outcome] = []
        lives: list[Live] = []
        try:
            for config in CONFIGS:
                if config.key in args.configs:
                    outcome, live = start_config(bench, config, runs)
                    outcomes.append(outcome)
                    if live is not None and args.sequential:
                        try:
                            run_phases(bench, [live], runs, renewal_rate)
                        finally:
                            _stop_fleet(bench, live.fleet, live.postgres)
                    elif live is not None:
                        lives.append(live)
            if lives:
                run_phases(bench, lives, runs, renewal_rate)
        finally:
            for live in lives:
                _stop_fleet(bench, live.fleet, live.postgres)
    report(bench, outcomes, renewal_rate)
    failed = [o.config.key for o in outcomes if o.failed]
    la = os.getloadavg()
    print(f"load average after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (the machine is shared)")
    print(f"total benchmark time {time.monotonic() - t_start:.0f} s")
    if failed:
        print(f"broken: {', '.join(failed)} did not start (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
