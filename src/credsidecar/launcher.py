"""Running the sidecar where no second container can be added (Nextflow tasks, Azure Batch).

credsidecar healthcheck   exit 0 when the sidecar of a run directory answers /readyz
credsidecar start         `credsidecar serve` detached, tied to the calling shell; prints the
                          job environment: `eval "$(credsidecar start --token-file F)"`
credsidecar run -- CMD    CMD with the job environment; the sidecar stops when CMD ends

`serve` itself runs in a child process (`start_new_session`, output to a log file, never to the
caller's terminal), given the same flags as written plus `--exit-with`: a launch token never
reaches a command line. This module imports neither asyncio nor aiohttp: `healthcheck` is a
Kubernetes exec probe run every few seconds.
"""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from credsidecar.config import RUN_DIR_REMEDY
from credsidecar.errors import ConfigError
from credsidecar.jobenv import ENV_FILE_NAME
from credsidecar.private_files import ensure_private_dir, read_private_text

__all__ = [
    "LAUNCHER_ONLY_FLAGS",
    "JobEnvironment",
    "healthcheck",
    "parse_job_environment",
    "run_command",
    "sidecar_url",
    "start_detached",
]

LOG_FILE_NAME = "sidecar.log"
# Flags of `start`/`run` themselves, taken out of what is passed on to `serve`.
LAUNCHER_ONLY_FLAGS = ("--wait", "--log-file")
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 20
# After CMD ends, how long the sidecar gets to remove its files before it is killed.
STOP_GRACE_SECONDS = 10.0
# Variables that name the sidecar's address, in the order healthcheck trusts them.
_URL_VARIABLES = (
    "CREDSIDECAR_URL",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "IDENTITY_ENDPOINT",
    "GCE_METADATA_HOST",
)


@dataclass(frozen=True)
class JobEnvironment:
    exports: dict[str, str]
    unsets: tuple[str, ...]
    text: str

    def applied_to(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.unsets}
        env.update(self.exports)
        return env


def parse_job_environment(text: str) -> JobEnvironment:
    """The export/unset lines jobenv.render writes, back into values."""
    exports: dict[str, str] = {}
    unsets: list[str] = []
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "unset":
            unsets.append(words[1])
        elif len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            exports[name] = value
    return JobEnvironment(exports, tuple(unsets), text)


def _read_env(run_dir: Path) -> str:
    # The text comes from a file another user must not be able to plant (private_files.py).
    return read_private_text(
        run_dir / ENV_FILE_NAME, directory="run directory", remedy=RUN_DIR_REMEDY
    )


def sidecar_url(env: JobEnvironment) -> tuple[str, int]:
    """(host, port) of the sidecar, from the variables it exports."""
    for name in _URL_VARIABLES:
        value = env.exports.get(name)
        if not value:
            continue
        hostport = value.removeprefix("http://").split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), int(port)
    raise ConfigError(
        "the job environment names no sidecar URL (no CREDSIDECAR_URL or metadata endpoint "
        "variable); is it a credsidecar env file?"
    )


def healthcheck(run_dir: Path, timeout: float) -> tuple[bool, str]:
    """(ready, one-line reason): GET /readyz at the sidecar that wrote `run_dir`'s env file."""
    try:
        env = parse_job_environment(_read_env(run_dir))
    except FileNotFoundError:
        return False, f"not ready: no {ENV_FILE_NAME} file in run directory {run_dir} yet"
    host, port = sidecar_url(env)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = response.read(2048).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"not ready: no answer from the sidecar at {host}:{port} ({exc})"
    finally:
        conn.close()
    if response.status == 200:
        return True, f"ready: {host}:{port}"
    return False, f"not ready: {host}:{port}/readyz answered {response.status}: {body.strip()}"


def serve_argv(raw: Sequence[str]) -> list[str]:
    """`raw` (the flags after `start`/`run`, before any `--`) without the launcher's own."""
    out: list[str] = []
    skip = False
    for word in raw:
        if skip:
            skip = False
            continue
        if word in LAUNCHER_ONLY_FLAGS:
            skip = True
            continue
        if word.split("=", 1)[0] in LAUNCHER_ONLY_FLAGS:
            continue
        out.append(word)
    return out


def _open_log(path: Path) -> int:
    """The sidecar's log, truncated per start (bounded), private, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"--log-file {path}: cannot write the sidecar's log ({exc.strerror}); pass a "
            "writable path"
        ) from None


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _env_file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    env: JobEnvironment
    log_file: Path


def _launch(
    flags: Sequence[str],
    run_dir: Path,
    exit_with: int | None,
    wait: float,
    log_file: Path | None,
    stdin_token: bool,
) -> Launched:
    """Starts `serve` detached and waits until it writes a new env file in `run_dir`."""
    ensure_private_dir(run_dir, what="run directory", remedy=RUN_DIR_REMEDY)
    log_path = log_file or run_dir / LOG_FILE_NAME
    env_path = run_dir / ENV_FILE_NAME
    stale = _env_file_id(env_path)  # a crashed sidecar's file is not this one's readiness
    argv = [sys.executable, "-m", "credsidecar", "serve", *flags]
    if exit_with is not None:
        argv += ["--exit-with", str(exit_with)]
    log_fd = _open_log(log_path)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_token else subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,  # the caller's Ctrl-C and terminal are not the sidecar's
        )
    finally:
        os.close(log_fd)
    if stdin_token and proc.stdin is not None:
        proc.stdin.write(sys.stdin.buffer.read())
        proc.stdin.close()
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise ConfigError(
                f"the sidecar exited ({proc.returncode}) before it was ready; its log "
                f"({log_path}) ends:\n{_tail(log_path)}"
            )
        current = _env_file_id(env_path)
        if current is not None and current != stale:
            try:
                text = _read_env(run_dir)
            except FileNotFoundError:
                text = None  # replaced between the two looks: try again
            if text is not None:
                return Launched(proc, parse_job_environment(text), log_path)
        if time.monotonic() >= deadline:
            _stop(proc)
            raise ConfigError(
                f"the sidecar was not ready within {wait:g} s (--wait); its log ({log_path}) "
                f"ends:\n{_tail(log_path)}"
            )
        time.sleep(POLL_SECONDS)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_detached(
    flags: Sequence[str],
    run_dir: Path,
    exit_with: int,
    wait: float,
    log_file: Path | None,
    stdin_token: bool,
) -> str:
    """`credsidecar start`: the job environment's text once the detached sidecar is ready."""
    return _launch(flags, run_dir, exit_with, wait, log_file, stdin_token).env.text


def run_command(
    flags: Sequence[str],
    command: Sequence[str],
    run_dir: Path,
    wait: float,
    log_file: Path | None,
    stdin_token: bool,
) -> int:
    """`credsidecar run`: CMD's exit status (128+N when signal N killed it)."""
    if not command:
        raise ConfigError("credsidecar run: give the command after `--`, e.g. `-- aws s3 ls`")
    launched = _launch(flags, run_dir, os.getpid(), wait, log_file, stdin_token)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []  # a signal that came before CMD existed is sent once it does

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            child = subprocess.Popen(list(command), env=launched.env.applied_to(os.environ))
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        for signum in pending:
            child.send_signal(signum)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(launched.proc)
    return 128 - status if status < 0 else status
