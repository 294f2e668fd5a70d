"""Real credsidecar processes for end-to-end tests, and a way to run clients in a job env."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt as pyjwt

from credsidecar.issuer.example import free_port, write_example

CLI = [sys.executable, "-m", "credsidecar"]
BIN = Path(sys.executable).parent


def wait_for(predicate: Any, what: str, proc: subprocess.Popen[Any] | None = None,
             log: Path | None = None, timeout: float = 60) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None and log.exists() else ""


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return int(proc.returncode)


def start(args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen([*CLI, *args], stdout=out, stderr=out, **kwargs)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (OSError, urllib.error.HTTPError):
        return False


class IssuerProcess:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config, self.api_key = write_example(directory, self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "issuer.log"

    def start(self, **env: str) -> None:
        """Starts the issuer; `env` adds variables (e.g. CREDSIDECAR_HPC_KEK)."""
        self.proc = start(["issuer", "--config", str(self.config)], self.log,
                          env={**os.environ, **env})  # fmt: skip
        wait_for(lambda: http_ok(f"{self.url}/healthz"), "issuer", self.proc, self.log)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)

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
            with urllib.request.urlopen(request, timeout=10) as resp:
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
        wait_for(self.info_file.exists, "sandbox", self.proc, self.log)
        self.info = json.loads(self.info_file.read_text())

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
        request = urllib.request.Request(
            f"{base or self.sts}/_sandbox/outage", data=json.dumps({"seconds": seconds}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        # The Azure stand-ins are HTTPS with the sandbox's own CA.
        context = ssl.create_default_context(cafile=self.info["azure"]["ca_file"])
        urllib.request.urlopen(request, timeout=5, context=context).close()

    def sts_calls(self) -> int:
        with urllib.request.urlopen(f"{self.sts}/_sandbox/stats", timeout=5) as resp:
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
            self.env = self.job_env()

    def job_env(self) -> dict[str, str]:
        """Applies exactly what `credsidecar env` prints to a clean base environment."""
        wait_for(lambda: (self.run_dir / "env").exists(), "sidecar ready", self.proc, self.log)
        done = subprocess.run(
            [*CLI, "env", "--run-dir", str(self.run_dir)],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return apply_shell_env(done.stdout)

    def audit_events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        events = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [e for e in events if event is None or e["event"] == event]

    def stop(self) -> int:
        return stop_process(self.proc)


def base_env() -> dict[str, str]:
    """A job's starting environment: PATH and HOME only, so nothing from this machine leaks."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}  # fmt: skip


def apply_shell_env(script: str, start_env: dict[str, str] | None = None) -> dict[str, str]:
    """Runs the export/unset lines in a real shell and returns the resulting environment."""
    bash = shutil.which("bash") or "/bin/bash"
    done = subprocess.run(
        [bash, "-c", f"{script}\nenv -0"],
        env=start_env or base_env(), capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    pairs = [item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item]
    env = {k.decode(): v.decode() for k, v in pairs}
    for noise in ("PWD", "SHLVL", "_", "OLDPWD"):
        env.pop(noise, None)
    return env


def run_client(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
