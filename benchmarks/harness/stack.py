"""The stack under test as real processes: the issuer and sandbox (`Upstream`), sidecars, the job
environment `credsidecar env` prints, and the time a sidecar takes to be ready.
"""

from __future__ import annotations

import json
import re
import ssl
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from harness.processes import (
    CLI,
    OBTAINED,
    PY,
    ROOT,
    Processes,
    fetch,
    http,
    http_ok,
    read_events,
    wait_until,
)


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


def start_issuer(procs: Processes, directory: Path, log: Path, core: int | None) -> tuple[str, str]:
    """Starts `credsidecar issuer` with the example policy; returns its URL and API key. Its
    config names its port before it binds it: should another process take the port in between,
    it is started again on another (`tests/support/ports.py`)."""
    from tests.support.ports import candidate_port, move_port, start_on_candidate_ports

    from credsidecar.issuer.example import write_example

    port = [candidate_port()]
    config, api_key = write_example(directory, port[0])

    def start() -> str:
        url = f"http://127.0.0.1:{port[0]}"
        proc = procs.start([*CLI, "issuer", "--config", str(config)], log, core)
        wait_until(partial(http_ok, f"{url}/healthz"), "issuer", proc, log)
        return url

    def next_port(new: int) -> None:
        move_port(config, port[0], new)
        port[0] = new

    return start_on_candidate_ports(start, log, next_port), api_key


def start_upstream(procs: Processes, work: Path, core: int | None, *sandbox_args: str) -> Upstream:
    issuer_dir = work / "issuer"
    url, api_key = start_issuer(procs, issuer_dir, work / "issuer.log", core)
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
    core: int | None,
    cloud: str,
    *extra: str,
    wrapper: Sequence[str] = (),
    ready_timeout: float = 60,
) -> Sidecar:
    """`credsidecar serve` for `token`, once ready; `wrapper` runs it under another program
    (valgrind), which may need a longer `ready_timeout`."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "launch-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    argv = [
        *wrapper,
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
    wait_until(
        env_file.exists, "sidecar ready", proc, sidecar.log, timeout=ready_timeout, interval=0.002
    )
    sidecar.ready_wall = time.time()
    return sidecar


def job_env(sidecar: Sidecar) -> dict[str, str]:
    """The job's environment: what `credsidecar env` prints, applied by a real shell to a clean
    base environment (`tests/support/jobenv.py`)."""
    from tests.support.jobenv import apply_shell_env

    done = subprocess.run(
        [*CLI, "env", "--run-dir", str(sidecar.run_dir)],
        capture_output=True, text=True, check=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    return apply_shell_env(done.stdout)


@dataclass
class ReadyRun:
    total: float  # Popen -> env file seen
    obtained: float | None  # Popen -> first credentials.obtained (audit)
    listening: float | None  # credentials.obtained -> sidecar.ready (audit)


def measure_ready(
    procs: Processes, up: Upstream, work: Path, token: str, core: int | None, runs: int, cloud: str
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
