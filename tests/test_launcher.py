"""launcher.py: healthcheck's answers, reading the job environment back, the flags passed on
to `serve`; and what `credsidecar healthcheck` loads (it runs every few seconds as a probe)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.cli import main
from credsidecar.errors import ConfigError
from credsidecar.jobenv import render
from credsidecar.launcher import healthcheck, parse_job_environment, serve_argv, sidecar_url
from credsidecar.private_files import write_private_atomic
from tests.test_imports import HEAVY, loaded_after


def _run_dir(tmp_path: Path, env_text: str | None) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    if env_text is not None:
        write_private_atomic(run_dir / "env", env_text)
    return run_dir


@pytest.fixture
def readyz() -> Iterator[tuple[int, list[int]]]:
    """A stand-in sidecar answering /readyz with the status in the returned list."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0] if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "not ready"}' if status[0] != 200 else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), status
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_job_environment_reads_back_what_render_writes() -> None:
    text = render({"A": "x y", "B": "it's"}, ["C", "D"])
    env = parse_job_environment(text)
    assert env.exports == {"A": "x y", "B": "it's"} and env.unsets == ("C", "D")
    assert env.applied_to({"C": "1", "E": "2", "A": "old"}) == {"E": "2", "A": "x y", "B": "it's"}


def test_sidecar_url_comes_from_the_exports() -> None:
    env = parse_job_environment(render({"IDENTITY_ENDPOINT": "http://127.0.0.1:4321/msi"}, []))
    assert sidecar_url(env) == ("127.0.0.1", 4321)
    with pytest.raises(ConfigError, match="names no sidecar URL"):
        sidecar_url(parse_job_environment(render({"AWS_REGION": "x"}, [])))


def test_healthcheck_is_ready_when_readyz_answers_200(
    tmp_path: Path, readyz: tuple[int, list[int]]
) -> None:
    port, _ = readyz
    run_dir = _run_dir(tmp_path, render({"CREDSIDECAR_URL": f"http://127.0.0.1:{port}"}, []))
    assert healthcheck(run_dir, 2.0) == (True, f"ready: 127.0.0.1:{port}")


def test_healthcheck_says_why_readyz_refused(tmp_path: Path, readyz: tuple[int, list[int]]) -> None:
    port, status = readyz
    status[0] = 503
    run_dir = _run_dir(tmp_path, render({"CREDSIDECAR_URL": f"http://127.0.0.1:{port}"}, []))
    ready, reason = healthcheck(run_dir, 2.0)
    assert not ready and "answered 503" in reason and "\n" not in reason


def test_healthcheck_without_env_file_is_not_ready(tmp_path: Path) -> None:
    ready, reason = healthcheck(_run_dir(tmp_path, None), 2.0)
    assert not ready and "no env file" in reason


def test_healthcheck_without_a_listening_sidecar_is_not_ready(tmp_path: Path) -> None:
    # A port just freed: nothing listens there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = _run_dir(tmp_path, render({"CREDSIDECAR_URL": f"http://127.0.0.1:{port}"}, []))
    ready, reason = healthcheck(run_dir, 2.0)
    assert not ready and "no answer from the sidecar" in reason


def test_healthcheck_command_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["healthcheck", "--run-dir", str(_run_dir(tmp_path, None))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("credsidecar: not ready") and err.count("\n") == 1


def test_serve_gets_the_flags_as_typed_without_the_launchers_own() -> None:
    typed = ["--token-file", "F", "--wait", "5", "--log-file=L", "--log-file", "M", "--port", "0"]
    assert serve_argv(typed) == ["--token-file", "F", "--port", "0"]


def test_healthcheck_loads_no_sdk_nor_aiohttp(
    tmp_path: Path, readyz: tuple[int, list[int]]
) -> None:
    port, _ = readyz
    run_dir = _run_dir(tmp_path, render({"CREDSIDECAR_URL": f"http://127.0.0.1:{port}"}, []))
    code = (
        "from credsidecar.cli import main\n"
        f"assert main(['healthcheck', '--run-dir', {str(run_dir)!r}]) == 0\n"
    )
    loaded = loaded_after(code)
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
