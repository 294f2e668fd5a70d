"""The command line: help and version, admin commands, and `credsidecar dev`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar import __version__
from credsidecar.cli import main as cli_main
from credsidecar.issuer.example import write_example

CLI = [sys.executable, "-m", "credsidecar"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_version() -> None:
    assert run("--version").stdout.strip() == f"credsidecar {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        [], ["issuer"], ["issuer", "serve"], ["issuer", "export-discovery"],
        ["issuer", "rotate-key"], ["issuer", "status"], ["issuer", "new-api-key"],
        ["issuer", "revoke-run"], ["issuer", "disable-user"], ["issuer", "enable-user"],
        ["token"], ["token", "mint"], ["serve"], ["env"], ["sandbox"], ["dev"],
        ["issuer", "new-user-key"], ["issuer", "revoke-user-key"], ["issuer", "new-kek"],
        ["hpc"], ["hpc", "run"], ["hpc", "check"], ["hpc", "cert"], ["hpc", "cluster"],
        ["hpc", "cluster", "add"], ["hpc", "credential", "set"], ["hpc", "status"],
        ["hpc", "ca-public-key"], ["healthcheck"], ["start"], ["run"],
    ],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    out = run(*command, "--help").stdout
    assert out.startswith("usage: credsidecar")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_example(tmp_path, port=8400)[0]


def test_status_prints_the_identity_table(config: Path) -> None:
    out = run("issuer", "status", "--config", str(config)).stdout
    assert out.splitlines()[0].split() == ["USER", "AWS", "GCP", "AZURE", "HPC"]
    carol = next(line for line in out.splitlines() if line.startswith("carol"))
    assert carol.split()[1:] == ["missing"] * 4
    rows = json.loads(run("issuer", "status", "--config", str(config), "--json").stdout)
    assert {r["user"] for r in rows} == {"alice", "bob", "carol"}
    assert "no HPC clusters yet" in out


def test_status_shows_the_hpc_registry_per_member(config: Path, tmp_path: Path) -> None:
    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.hpc_registry import parse_cluster
    from credsidecar.issuer.runner import open_service

    with open_service(load_config(config)) as service:
        users = service.policy.users
        host_key = service.hpc.ca_public_key()  # any OpenSSH public key line will do
        cluster = parse_cluster("hpc1", {"host": "login", "host_keys": [host_key],
                                         "usernames": {"alice": "ali"}}, users)  # fmt: skip
        service.hpc.registry.put_cluster(cluster, "carol", create=True)
    out = run("issuer", "status", "--config", str(config)).stdout
    hpc = out.split("\n\n", 1)[1].splitlines()
    assert hpc[0].split() == ["USER", "HPC1"]
    assert [line.split() for line in hpc[1:4]] == [["alice", "certificate"], ["bob", "missing"],
                                                   ["carol", "missing"]]  # fmt: skip


def test_export_discovery_writes_static_files(config: Path, tmp_path: Path) -> None:
    run("issuer", "export-discovery", "--config", str(config), str(tmp_path / "public"))
    discovery = json.loads((tmp_path / "public/.well-known/openid-configuration").read_text())
    jwks = json.loads((tmp_path / "public/.well-known/jwks.json").read_text())
    assert discovery["jwks_uri"] == "http://127.0.0.1:8400/.well-known/jwks.json"
    assert len(jwks["keys"]) == 1 and "d" not in jwks["keys"][0]


def test_token_mint_writes_a_private_file_and_the_audit_names_the_cli(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "launch.jwt"
    selection = ["--workspace", "genomics", "--identity", "aws=genomics-readonly"]
    run("token", "mint", "--config", str(config), "--user", "bob", "--run", "r1", *selection,
        "--out", str(out))  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().count(".") == 2
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "launch_token.minted"
    assert events[-1]["identities"] == {"aws": ["genomics-readonly"], "gcp": ["bob"],
        "azure": ["bob", "genomics-pipelines"], "hpc": ["sandbox-cluster"]}  # fmt: skip
    assert events[-1]["caller"] == "cli"


def test_token_mint_refusal_is_a_readable_error(config: Path) -> None:
    done = run("token", "mint", "--config", str(config), "--user", "bob", "--run", "r1",
               "--identity", "aws=alice-data", ok=False)  # fmt: skip
    assert done.returncode == 2
    assert "user 'bob' (run 'r1') may not use aws identity 'alice-data'" in done.stderr
    assert "issuer explain" in done.stderr  # says how to see what bob is granted
    assert "Traceback" not in done.stderr


def test_bad_config_is_a_readable_error(tmp_path: Path) -> None:
    bad = tmp_path / "issuer.toml"
    bad.write_text('issuer_url = "https://x"\nlisten = 5\n')
    done = run("issuer", "--config", str(bad), ok=False)
    assert done.returncode == 2
    assert f"{bad}:2: listen must be HOST:PORT" in done.stderr


def test_revoke_run_and_rotate_key_from_the_cli(config: Path) -> None:
    assert "revoked" in run("issuer", "revoke-run", "--config", str(config), "r1").stdout
    assert "already revoked" in run("issuer", "revoke-run", "--config", str(config), "r1").stdout
    out = run("issuer", "rotate-key", "--config", str(config), "--stage").stdout
    assert "staged" in out and out.count("pending") == 1


def test_new_api_key_prints_key_and_digest() -> None:
    out = run("issuer", "new-api-key", "--name", "seqera").stdout
    assert "csk_" in out and 'name = "seqera"' in out and "sha256 = " in out


def test_member_keys_are_created_once_shown_and_revoked(config: Path) -> None:
    import hashlib

    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.runner import open_service

    made = run("issuer", "new-user-key", "--config", str(config), "--user", "alice",
               "--name", "laptop")  # fmt: skip
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("csu_")
    digest = hashlib.sha256(key.encode()).hexdigest()
    with open_service(load_config(config)) as service:
        assert service.hpc.registry.user_of_key(digest) == ("alice", "laptop")
        assert key not in service.config.database.read_bytes().decode(errors="replace")
    run("issuer", "revoke-user-key", "--config", str(config), "--user", "alice")
    with open_service(load_config(config)) as service:
        assert service.hpc.registry.user_of_key(digest) is None
    missing = run("issuer", "new-user-key", "--config", str(config), "--user", "mallory", ok=False)
    assert missing.returncode != 0 and "mallory" in missing.stderr


def test_token_mint_out_onto_an_existing_file_leaves_it_private(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "launch.jwt"
    out.write_text("old")
    out.chmod(0o644)
    run("token", "mint", "--config", str(config), "--user", "bob", "--run", "r1",
        "--workspace", "genomics", "--out", str(out))  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().count(".") == 2


# --- a run directory another local user planted ------------------------------------------------

NOBODY = 65534


def plant(run_dir: Path, mode: int = 0o755, owner: int | None = NOBODY) -> Path:
    """What another user leaves at the predictable path: an env file that runs a command."""
    run_dir.mkdir()
    (run_dir / "env").write_text("touch /tmp/credsidecar-pwned\n")
    (run_dir / "env").chmod(0o600)
    run_dir.chmod(mode)
    if owner is not None:
        os.chown(run_dir / "env", owner, owner)
        os.chown(run_dir, owner, owner)
    return run_dir


def untouched(run_dir: Path, mode: int) -> bool:
    return stat.S_IMODE(run_dir.stat().st_mode) == mode and [p.name for p in run_dir.iterdir()] == [
        "env"
    ]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")


@needs_root
def test_env_prints_nothing_from_a_run_directory_another_user_owns(tmp_path: Path) -> None:
    run_dir = plant(tmp_path / "run")
    done = run("env", "--run-dir", str(run_dir), ok=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"credsidecar: run directory {run_dir} is owned by uid {NOBODY}, not you (uid 0): "
        "someone else may have planted it; remove it or pass --run-dir to a private directory "
        "(or set XDG_RUNTIME_DIR)\n"
    )


def test_env_prints_nothing_from_a_run_directory_others_can_write(tmp_path: Path) -> None:
    run_dir = plant(tmp_path / "run", mode=0o777, owner=None)
    done = run("env", "--run-dir", str(run_dir), ok=False)
    assert done.returncode == 2 and done.stdout == ""
    assert f"run directory {run_dir} has mode 0777" in done.stderr


def test_env_prints_nothing_from_an_env_file_others_can_read(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "env").write_text("export A=1\n")
    (run_dir / "env").chmod(0o644)
    done = run("env", "--run-dir", str(run_dir), ok=False)
    assert done.returncode == 2 and done.stdout == ""
    assert f"{run_dir / 'env'} has mode 0644" in done.stderr


@needs_root
def test_serve_refuses_a_planted_run_directory_and_leaves_it_alone(tmp_path: Path) -> None:
    run_dir = plant(tmp_path / "run")
    token = tmp_path / "launch-token"
    token.write_text("a.b.c")
    done = run("serve", "--token-file", str(token), "--run-dir", str(run_dir), ok=False)
    assert done.returncode == 2, done.stderr
    assert f"run directory {run_dir} is owned by uid {NOBODY}, not you (uid 0)" in done.stderr
    assert "Traceback" not in done.stderr
    assert untouched(run_dir, 0o755)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory under /tmp that another uid can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="credsidecar-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop to another uid")
@pytest.mark.parametrize("command", ["serve", "env"])
@pytest.mark.parametrize("mode", [0o755, 0o700])
def test_a_non_root_user_is_refused_a_run_directory_root_owns(
    reachable_dir: Path, command: str, mode: int
) -> None:
    """The reverse plant, without root's power to chmod or to open a 0700 directory: a
    readable message, no traceback."""
    run_dir = plant(reachable_dir / "run", mode=mode, owner=None)  # root's
    token = reachable_dir / "launch-token"
    token.write_text("a.b.c")
    token.chmod(0o644)
    extra = ["--token-file", str(token)] if command == "serve" else []
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *CLI, command,
         "--run-dir", str(run_dir), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert f"run directory {run_dir} is owned by uid 0, not you (uid {NOBODY})" in done.stderr
    assert "Traceback" not in done.stderr
    assert untouched(run_dir, mode)


def test_dev_without_the_sandbox_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container image installs no sandbox: `IMAGE dev` must not end in a traceback."""
    import credsidecar.dev

    async def missing(args: object) -> int:
        raise ModuleNotFoundError("No module named 'moto'", name="moto")

    monkeypatch.setattr(credsidecar.dev, "run_dev", missing)
    assert cli_main(["dev"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'credsidecar[sandbox]'" in err and "Traceback" not in err


def test_output_into_a_closed_pipe_ends_quietly(config: Path) -> None:
    """`credsidecar ... | head`: the reader gone, the command stops with the shell's SIGPIPE
    status and no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails
    try:
        done = subprocess.run(
            [*CLI, "issuer", "explain", "--config", str(config), "--user", "alice", "--json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_an_issuer_whose_port_is_taken_says_so_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = write_example(tmp_path, port=port)[0]
        done = run("issuer", "--config", str(taken), ok=False)
    assert done.returncode == 2, done.stderr
    assert f"the issuer cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr
