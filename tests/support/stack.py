"""The credsidecar stack as real processes: an issuer, the sandbox clouds, sidecars, and a way
to run a client in a job's environment.

End-to-end tests and benchmarks share these; the generic process helpers (`start`, `wait_for`,
`stop_process`, `CLI`) are in `tests.support.processes`. Every class stops the process it
started when its start-up fails, so a failing caller leaves nothing running.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt as pyjwt

from credsidecar.issuer.example import write_example
from tests.support.jobenv import apply_shell_env
from tests.support.ports import candidate_port, move_port, start_on_candidate_ports
from tests.support.processes import CLI, http_ok, start, stop_process, tail, wait_for
from tests.support.timing import scaled

__all__ = ["IssuerProcess", "SandboxProcess", "SidecarProcess", "run_client"]


class IssuerProcess:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = candidate_port()  # the config names it; see start()
        self.config, self.api_key = write_example(directory, self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "issuer.log"
        # Seconds the last start took until /healthz answered: this machine's speed, now.
        self.startup_seconds = 0.0

    def start(self, **env: str) -> None:
        """Starts the issuer and waits until it answers; `env` adds variables (e.g.
        CREDSIDECAR_HPC_KEK). A first start moves to another port if its candidate port was
        taken meanwhile (tests.support.ports); a restart keeps the URL tokens already name."""
        if self.proc is None:
            start_on_candidate_ports(lambda: self._start(env), self.log, self._move_to)
        else:
            self._start(env)

    def _move_to(self, port: int) -> None:
        move_port(self.config, self.port, port)
        self.port, self.url = port, f"http://127.0.0.1:{port}"

    def _start(self, env: dict[str, str]) -> None:
        started = time.monotonic()
        self.proc = start(["issuer", "--config", str(self.config)], self.log,
                          env={**os.environ, **env})  # fmt: skip
        try:
            wait_for(lambda: http_ok(f"{self.url}/healthz"), "issuer", self.proc, self.log)
        except BaseException:
            stop_process(self.proc)
            raise
        self.startup_seconds = time.monotonic() - started

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """Stops and reaps the issuer (a no-op returning 0 if it was never started)."""
        return 0 if self.proc is None else stop_process(self.proc)

    def post(self, path: str, body: dict[str, Any] | None = None, form: bool = False) -> Any:
        if form:
            data = urllib.parse.urlencode(body or {}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            data = json.dumps(body or {}).encode()
            headers = {"Content-Type": "application/json",
                       "Authorization": f"Bearer {self.api_key}"}  # fmt: skip
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=scaled(10)) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def mint(self, user: str = "alice", run: str = "run-1", **extra: Any) -> dict[str, Any]:
        status, body = self.post(
            "/v1/launch-tokens", {"user": user, "run": run, "workspace": "genomics", **extra}
        )
        assert status == 201, body
        return dict(body)

    def exchange(self, token: str) -> tuple[int, dict[str, Any]]:
        return self.post(  # type: ignore[no-any-return]
            "/v1/token",
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "subject_token": token,
                "audience": "sts.amazonaws.com",
            },
            form=True,
        )

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        client = pyjwt.PyJWKClient(f"{self.url}/.well-known/jwks.json", cache_jwk_set=False)
        key = client.get_signing_key_from_jwt(token)
        return dict(
            pyjwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=self.url)
        )


class SandboxProcess:
    def __init__(self, directory: Path, issuer_url: str, *extra: str) -> None:
        self.info_file = directory / "sandbox.json"
        self.log = directory / "sandbox.log"
        self.proc = start(
            ["sandbox", "--issuer-url", issuer_url, "--info-file", str(self.info_file), *extra],
            self.log,
        )
        try:
            wait_for(self.info_file.exists, "sandbox", self.proc, self.log)
            self.info = json.loads(self.info_file.read_text())
        except BaseException:
            stop_process(self.proc)
            raise

    @property
    def sts(self) -> str:
        return str(self.info["aws"]["sts_endpoint"])

    @property
    def s3(self) -> str:
        return str(self.info["aws"]["endpoint_url"])

    def sidecar_args(self) -> list[str]:
        """`credsidecar serve` flags pointing every cloud at this sandbox, as it describes them."""
        return [str(flag) for flag in self.info["sidecar_flags"]]

    def outage(self, seconds: float, base: str | None = None) -> None:
        """Makes the stand-in at `base` (default AWS STS) answer 503 for `seconds` from now;
        0 ends an outage."""
        request = urllib.request.Request(
            f"{base or self.sts}/_sandbox/outage", data=json.dumps({"seconds": seconds}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        # The Azure stand-ins are HTTPS with the sandbox's own CA.
        context = ssl.create_default_context(cafile=self.info["azure"]["ca_file"])
        urllib.request.urlopen(request, timeout=scaled(5), context=context).close()

    def sts_calls(self) -> int:
        with urllib.request.urlopen(f"{self.sts}/_sandbox/stats", timeout=scaled(5)) as resp:
            return int(json.loads(resp.read())["AssumeRoleWithWebIdentity"])


class SidecarProcess:
    """`credsidecar serve` for one launch token; the job env comes from `credsidecar env`."""

    def __init__(self, directory: Path, token: str, sandbox: SandboxProcess,
                 *extra: str, wait: bool = True, cloud: str = "aws") -> None:  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.token_file = directory / "launch-token"
        self.token_file.write_text(token)
        self.run_dir = directory / "run"
        self.audit = directory / "audit.jsonl"
        self.log = directory / "sidecar.log"
        self.proc = start(
            ["serve", "--token-file", str(self.token_file), "--run-dir", str(self.run_dir),
             "--audit-log", str(self.audit), "--clouds", cloud, *sandbox.sidecar_args(), *extra],
            self.log,
        )  # fmt: skip
        self.env: dict[str, str] = {}
        if wait:
            try:
                self.env = self.job_env()
            except BaseException:
                stop_process(self.proc)
                raise

    def job_env(self) -> dict[str, str]:
        """Applies exactly what `credsidecar env` prints to a clean base environment, once the
        sidecar is ready (its env file written)."""
        wait_for(lambda: (self.run_dir / "env").exists(), "sidecar ready", self.proc, self.log)
        done = subprocess.run(
            [*CLI, "env", "--run-dir", str(self.run_dir)],
            capture_output=True, text=True, timeout=scaled(30), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
            raise AssertionError(
                f"`credsidecar env` failed ({done.returncode}) with the sidecar {state}: "
                f"{done.stderr.strip()}; sidecar log: {tail(self.log)}"
            )
        return apply_shell_env(done.stdout)

    def log_has(self, *fragments: str) -> bool:
        """Whether one line of the sidecar's log holds every fragment."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return any(all(f in line for f in fragments) for line in text.splitlines())

    def audit_events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        events = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [e for e in events if event is None or e["event"] == event]

    def stop(self) -> int:
        return stop_process(self.proc)


def run_client(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs a client to completion (`timeout` is scaled; on expiry it is killed and reaped)."""
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=scaled(timeout), check=False
    )


def preflight_flags(info: dict[str, Any]) -> list[str]:
    """What a platform gives `credsidecar preflight --token-file` for the sandbox that `info`
    (its --info-file) describes: token services, storage endpoints, its CA."""
    return [
        "--aws-sts-endpoint", info["aws"]["sts_endpoint"],
        "--aws-endpoint-url", info["aws"]["endpoint_url"],
        "--gcp-sts-url", info["gcp"]["sts_url"], "--gcp-iam-url", info["gcp"]["iam_url"],
        "--gcs-endpoint-url", info["gcp"]["storage_url"],
        "--azure-authority", info["azure"]["authority_url"], "--ca-file", info["azure"]["ca_file"],
        "--azure-blob-url", info["azure"]["blob_url"],
    ]  # fmt: skip
