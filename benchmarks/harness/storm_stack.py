"""The issuer configurations the launch storm runs against, as real processes on 127.0.0.1, and
the /proc readers that sum an issuer's processes (its workers): peak RSS, PSS and CPU time.

A configuration whose feature is not in this tree (worker processes, the PostgreSQL store,
signing keys shared between replicas) raises `NotAvailable` with the reason, found by trying
it: the issuer refusing the config, a module missing, or the issuer accepting the config and
then not doing it (one process only; nothing written to PostgreSQL; one replica refusing the
other's launch tokens).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.processes import CLI, Processes, http, http_ok, tail


class NotAvailable(Exception):
    """The configuration's feature is not in this tree; the message says what was missing."""


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    url: str
    directory: Path
    log: Path


@dataclass
class Fleet:
    """One configuration's issuer processes. `urls`: where clients send (round robin)."""

    key: str
    nodes: list[Node]
    api_key: str
    notes: list[str] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes]

    def mint(self, run: str, user: str, workspace: str, node: int = 0) -> str:
        import json

        body = json.dumps({"user": user, "run": run, "workspace": workspace}).encode()
        status, raw = http(
            "POST",
            f"{self.nodes[node].url}/v1/launch-tokens",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.api_key}",
            },
        )
        if status != 201:
            raise RuntimeError(f"minting a launch token failed: HTTP {status} {raw[:300]!r}")
        return str(json.loads(raw)["token"])


# --- /proc: an issuer and every process under it -------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """`root` and every live process under it (its workers), from /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _cpu(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return 0.0


@dataclass
class Usage:
    processes: int
    hwm_mb: float  # sum of VmHWM (peak RSS) over the processes
    pss_mb: float  # sum of Pss now (shared pages counted once across the processes)
    cpu_s: float  # user + system CPU so far, summed
    cpu_by_pid: dict[int, float] = field(default_factory=dict)


def usage(roots: list[int]) -> Usage:
    pids = [p for root in roots for p in descendants(root)]
    cpu = {p: _cpu(p) for p in pids}
    return Usage(
        len(pids),
        sum(_status_kib(p, "VmHWM") for p in pids) / 1024,
        sum(_pss_kib(p) for p in pids) / 1024,
        sum(cpu.values()),
        cpu,
    )


# --- PostgreSQL ------------------------------------------------------------------------------


class Postgres:
    """A throwaway cluster from the test suite's `tests/support/postgres.py` (its own temporary
    directory, handed to the `postgres` user when we are root), with one database."""

    def __init__(self) -> None:
        try:
            module = importlib.import_module("tests.support.postgres")
        except ImportError as exc:
            raise NotAvailable(f"tests/support/postgres.py is not in this tree ({exc})") from exc
        self.cluster: Any = module.PostgresCluster()
        try:
            self.cluster.start()
            self.database = str(self.cluster.create_database("storm"))
        except BaseException:
            self.stop()
            raise
        self.url = str(self.cluster.url(self.database))
        self.password = str(self.cluster.password)

    def tables(self) -> int:
        """How many tables the issuer created in the database (0: it never used it)."""
        import psycopg

        kwargs = self.cluster.connect_kwargs(self.database)
        with psycopg.connect(**kwargs, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
        return int(row[0]) if row else 0

    def pids(self) -> list[int]:
        proc = getattr(self.cluster, "_proc", None)
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def stop(self) -> None:
        """Stops the server (always reaped) and removes its directory."""
        self.cluster.remove()


# --- issuer processes ------------------------------------------------------------------------


def _workers_line(workers: str | int) -> str:
    return f'workers = "{workers}"\n' if workers == "auto" else f"workers = {workers}\n"


def write_node_config(
    directory: Path,
    port: int,
    workers: str | int,
    store: str = "",
    template: Path | None = None,
) -> tuple[Path, str]:
    """The example issuer (policy with every sandbox identity) with `workers` and `store` (a
    TOML `[store]` table, or ""). With `template` (another node's directory), the same policy,
    platform key, key-encryption key and public URL, listening on `port` instead."""
    from credsidecar.issuer.example import write_example

    if template is None:
        config, api_key = write_example(directory, port, stored_keys=True)
        text = config.read_text()
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("policy.toml", "hpc-kek"):
            shutil.copy2(template / name, directory / name)
        text = (template / "issuer.toml").read_text()
        text = re.sub(r'(?m)^listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
        text = re.sub(r"(?m)^(workers = .*|\[store\][\s\S]*)\n", "", text)
        config, api_key = directory / "issuer.toml", ""
    # Top-level keys go before the first table; [store] at the end.
    text = _workers_line(workers) + re.sub(r"(?m)^workers = .*\n", "", text)
    text = text.split("\n[store]\n")[0].rstrip("\n") + "\n" + (f"\n{store}" if store else "")
    config.write_text(text)
    return config, api_key


def start_node(
    procs: Processes, directory: Path, config: Path, cores: str, env: dict[str, str] | None
) -> Node:
    """`credsidecar issuer --config CONFIG` pinned to `cores` ("0,1"), once /healthz answers.
    A refusal of the config (exit before healthy) is `NotAvailable` with the issuer's words."""
    from tests.support.ports import start_on_candidate_ports

    log = directory / "issuer.log"

    def port_of() -> int:
        m = re.search(r'(?m)^listen = "127\.0\.0\.1:(\d+)"', config.read_text())
        assert m, "listen address missing from the config"
        return int(m.group(1))

    def start() -> Node:
        url = f"http://127.0.0.1:{port_of()}"
        argv = ["taskset", "-c", cores, *CLI, "issuer", "--config", str(config)]
        proc = procs.start(argv, log, None, env=env)
        deadline = time.monotonic() + 60
        while not http_ok(f"{url}/healthz"):
            if proc.poll() is not None:
                said = tail(log, 600).strip()
                if "address already in use" in said.lower():
                    raise RuntimeError(said)
                raise NotAvailable(f"the issuer refused the configuration: {said[-400:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"issuer not healthy after 60 s: {tail(log)}")
            time.sleep(0.05)
        return Node(proc, url, directory, log)

    def next_port(new: int) -> None:
        # The listen address only: a replica keeps the public URL (issuer_url) of the first.
        old = port_of()
        text = config.read_text().replace(
            f'listen = "127.0.0.1:{old}"', f'listen = "127.0.0.1:{new}"'
        )
        if f'issuer_url = "http://127.0.0.1:{old}"' in text:  # the first node: its own URL
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        config.write_text(text)

    return start_on_candidate_ports(start, log, next_port)


def wait_for_workers(node: Node, want: int, seconds: float = 15) -> int:
    """How many processes the issuer runs once `want` are up (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    count = len(descendants(node.proc.pid))
    while count < want and time.monotonic() < deadline:
        time.sleep(0.2)
        count = len(descendants(node.proc.pid))
    return count


def check_replicas_share_keys(
    fleet: Fleet, user: str, workspace: str, form: dict[str, str]
) -> None:
    """A launch token minted at replica A exchanged at replica B, and the other way round:
    both must answer 200, or the replicas do not share signing keys."""
    from urllib.parse import urlencode

    for minted, exchanged in ((0, 1), (1, 0)):
        token = fleet.mint(f"storm-replica-check-{minted}", user, workspace, node=minted)
        status, raw = http(
            "POST",
            f"{fleet.nodes[exchanged].url}/v1/token",
            data=urlencode({**form, "subject_token": token}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            raise NotAvailable(
                f"replica {exchanged + 1} refuses a launch token minted at replica {minted + 1} "
                f"(HTTP {status}: {raw[:200].decode('utf-8', 'replace')}): signing keys are not "
                "shared between replicas in this tree"
            )
