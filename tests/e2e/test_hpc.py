"""HPC identities end to end: a real issuer process, a real OpenSSH sshd on loopback with real
accounts, and the real `credsidecar hpc` command line (and plain `ssh` with `hpc cert`).

Members: carol is an owner (`owner = true` in the example policy); alice and bob are members.
Clusters, created by carol through the API:
- hpc1, certificate mode, the login node verified by its host CA; alice -> csalice;
- hpc2, stored-key mode, the login node's host key pinned; bob uploads his own key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from credsidecar.listen import bind_loopback, port_of
from tests.hpc.sshd import (
    ACCOUNTS,
    SHARED_GROUP,
    Sshd,
    authorize_key,
    ensure_accounts,
    require_host,
    set_bashrc,
    start_sshd,
)
from tests.support.processes import CLI
from tests.support.stack import IssuerProcess
from tests.support.timing import scaled

_runs = iter(range(1_000_000))


@dataclass
class Hpc:
    issuer: IssuerProcess
    sshd: Sshd
    member_keys: dict[str, str]
    work: Path
    shared: Path  # world-traversable, for the accounts' view of work directories
    bob_private_key: str

    def cli(
        self, *args: str, member: str | None = None, token: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.work),
            "LANG": "C.UTF-8",
            "CREDSIDECAR_ISSUER_URL": self.issuer.url,
        }
        if member:
            env["CREDSIDECAR_MEMBER_KEY"] = self.member_keys[member]
        if token:
            token_file = self.work / f"token-{secrets.token_hex(4)}"
            token_file.write_text(token)
            env["CREDSIDECAR_TOKEN_FILE"] = str(token_file)
        return subprocess.run(
            [*CLI, "hpc", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
        )

    def launch(self, user: str) -> str:
        return str(self.issuer.mint(user, f"hpc-{os.getpid()}-{next(_runs)}")["token"])


def _member_key(issuer: IssuerProcess, user: str) -> str:
    done = subprocess.run(
        [*CLI, "issuer", "new-user-key", "--config", str(issuer.config), "--user", user],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hpc]:
    require_host()
    ensure_accounts()
    base = tmp_path_factory.mktemp("hpc")
    issuer = IssuerProcess(base / "issuer")
    kek = base64.b64encode(secrets.token_bytes(32)).decode()
    issuer.start(CREDSIDECAR_HPC_KEK=kek)
    sshd: Sshd | None = None
    shared = Path(tempfile.mkdtemp(prefix="credsidecar-hpc-", dir="/var/tmp"))
    try:
        ca = subprocess.run(
            [*CLI, "hpc", "ca-public-key", "--issuer-url", issuer.url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sshd = start_sshd(base / "sshd", ca)
        keys = {user: _member_key(issuer, user) for user in ("alice", "bob", "carol")}
        bob_key = asyncssh.generate_private_key("ssh-ed25519")
        authorize_key(ACCOUNTS["bob"], bob_key.export_public_key().decode())
        for linux in ACCOUNTS.values():
            set_bashrc(linux, "")
        work = base / "work"
        work.mkdir()
        # pytest's temporary directories are 0700 to root; the accounts need a way in.
        shared.chmod(0o755)
        private = bob_key.export_private_key("openssh", "bobs secret").decode()
        state = Hpc(issuer, sshd, keys, work, shared, private)
        host_ca, host_key = work / "host_ca.pub", work / "host_key.pub"
        host_ca.write_text(sshd.host_ca_line + "\n")
        host_key.write_text(sshd.host_key_line + "\n")
        made = state.cli(
            "cluster",
            "add",
            "hpc1",
            "--host",
            "127.0.0.1",
            "--port",
            str(sshd.port),
            "--scheduler",
            "slurm",
            "--host-ca-key",
            str(host_ca),
            "--username",
            "alice=csalice",
            member="carol",
        )
        assert made.returncode == 0, made.stderr
        made = state.cli(
            "cluster",
            "add",
            "hpc2",
            "--host",
            "127.0.0.1",
            "--port",
            str(sshd.port),
            "--mode",
            "stored-key",
            "--host-key",
            str(host_key),
            member="carol",
        )
        assert made.returncode == 0, made.stderr
        yield state
    finally:
        if sshd is not None:
            sshd.stop()
        issuer.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_a_certificate_logs_in_as_its_user_and_sshd_logs_who(hpc: Hpc) -> None:
    token = hpc.launch("alice")
    done = hpc.cli("run", "--cluster", "hpc1", "--", "id", "-un", token=token)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "csalice"
    failing = hpc.cli(
        "run", "--cluster", "hpc1", "--", "sh", "-c", "echo err >&2; exit 3", token=token
    )
    assert failing.returncode == 3 and failing.stderr.strip().endswith("err")
    # Arguments arrive as given, quoted, including the command's own `--`.
    echoed = hpc.cli("run", "--cluster", "hpc1", "--", "echo", "a b", "--", "$HOME", token=token)
    assert echoed.stdout == "a b -- $HOME\n"
    # sshd's log names the person and the run through the certificate's key id.
    run = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["run"]
    assert f"ID credsidecar:alice:{run}:hpc1" in hpc.sshd.log.read_text()
    audit = (hpc.issuer.config.parent / "audit.jsonl").read_text()
    issued = [json.loads(line) for line in audit.splitlines() if "ssh.certificate" in line]
    assert issued[-1]["principal"] == "csalice" and issued[-1]["run"] == run


def _issued_certificate(hpc: Hpc, user: str, key: asyncssh.SSHKey) -> dict[str, object]:
    body = {
        "launch_token": hpc.launch(user),
        "cluster": "hpc1",
        "public_key": key.export_public_key().decode(),
    }
    request = urllib.request.Request(
        f"{hpc.issuer.url}/v1/ssh/certificates",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.loads(resp.read()))


async def _login(
    hpc: Hpc, username: str, key: asyncssh.SSHKey, cert: asyncssh.SSHCertificate
) -> str:
    known = asyncssh.import_known_hosts(
        f"@cert-authority [127.0.0.1]:{hpc.sshd.port} {hpc.sshd.host_ca_line}\n"
    )
    async with asyncssh.connect(
        "127.0.0.1",
        hpc.sshd.port,
        username=username,
        known_hosts=known,
        client_keys=[(key, cert)],
        agent_path=None,
        config=[],
    ) as conn:
        return str((await conn.run("id -un", check=True)).stdout).strip()


async def test_a_certificate_is_refused_for_another_account_after_expiry_and_from_another_ca(
    hpc: Hpc,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    issued = await asyncio.to_thread(_issued_certificate, hpc, "alice", key)
    cert = asyncssh.import_certificate(str(issued["certificate"]))
    assert cert.principals == ["csalice"]
    assert await _login(hpc, "csalice", key, cert) == "csalice"
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(hpc, "csbob", key, cert)  # the principal is csalice only
    # An expired certificate from the same CA (its key is the issuer's, read from its state).
    ca = asyncssh.read_private_key(hpc.issuer.config.parent / "state" / "keys" / "ssh-ca")
    now = int(time.time())
    expired = ca.generate_user_certificate(
        key, "expired", principals=["csalice"], valid_after=now - 600, valid_before=now - 60
    )
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(hpc, "csalice", key, expired)
    other_ca = asyncssh.generate_private_key("ssh-ed25519")
    foreign = other_ca.generate_user_certificate(
        key, "foreign", principals=["csalice"], valid_before=now + 600
    )
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(hpc, "csalice", key, foreign)


def test_members_without_a_username_and_revoked_runs_get_no_certificate(hpc: Hpc) -> None:
    done = hpc.cli("run", "--cluster", "hpc1", "--", "true", token=hpc.launch("bob"))
    assert done.returncode != 0
    assert "user 'bob' has no Linux username on cluster 'hpc1'" in done.stderr
    run = f"hpc-revoked-{os.getpid()}"
    token = str(hpc.issuer.mint("alice", run)["token"])
    status, _ = hpc.issuer.post(f"/v1/runs/{run}/revoke", {"reason": "test"})
    assert status == 200
    done = hpc.cli("run", "--cluster", "hpc1", "--", "true", token=token)
    assert done.returncode != 0 and f"run '{run}'" in done.stderr and "revoked" in done.stderr


def test_stored_key_mode_logs_in_with_the_uploaded_key_which_no_api_returns(hpc: Hpc) -> None:
    key_file = hpc.work / "bob_key"
    key_file.write_text(hpc.bob_private_key)
    # The passphrase travels in a variable, never on the command line.
    done = subprocess.run(
        [
            *CLI,
            "hpc",
            "credential",
            "set",
            "--cluster",
            "hpc2",
            "--username",
            "csbob",
            "--private-key",
            str(key_file),
            "--passphrase-env",
            "BOB_PASSPHRASE",
            "--issuer-url",
            hpc.issuer.url,
        ],
        env={
            "PATH": os.environ["PATH"],
            "CREDSIDECAR_MEMBER_KEY": hpc.member_keys["bob"],
            "BOB_PASSPHRASE": "bobs secret",
        },
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["username"] == "csbob" and shown["fingerprint"].startswith("SHA256:")
    assert "private_key" not in shown and "passphrase" not in shown
    ran = hpc.cli("run", "--cluster", "hpc2", "--", "id", "-un", token=hpc.launch("bob"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "csbob"
    # alice cannot use bob's credential, read it, or delete it.
    theirs = hpc.cli("run", "--cluster", "hpc2", "--", "id", token=hpc.launch("alice"))
    assert theirs.returncode != 0 and "user 'alice' has no stored credential" in theirs.stderr
    read = hpc.cli("credential", "show", "--cluster", "hpc2", member="alice")
    assert read.returncode != 0 and "alice" in read.stderr
    assert hpc.cli("credential", "show", "--cluster", "hpc2", member="bob").returncode == 0
    # Sealed at rest: neither the key nor the passphrase is in the database or the audit log.
    secret_line = hpc.bob_private_key.splitlines()[1]
    state = hpc.issuer.config.parent / "state"
    with sqlite3.connect(state / "issuer.db") as db:
        dump = "\n".join(db.iterdump())
    audit = (hpc.issuer.config.parent / "audit.jsonl").read_text()
    for text in (dump, audit, hpc.issuer.log.read_text()):
        assert secret_line not in text and "bobs secret" not in text


def test_owners_manage_clusters_and_members_only_their_own_credentials(hpc: Hpc) -> None:
    refused = hpc.cli(
        "cluster",
        "add",
        "mine",
        "--host",
        "h",
        "--host-key",
        str(hpc.work / "host_key.pub"),
        member="alice",
    )
    assert refused.returncode != 0 and "only organization owners" in refused.stderr
    refused = hpc.cli("cluster", "delete", "hpc1", member="bob")
    assert refused.returncode != 0 and "only organization owners" in refused.stderr
    no_tofu = hpc.cli("cluster", "add", "blind", "--host", "h", member="carol")
    assert no_tofu.returncode != 0 and "never trusted on first use" in no_tofu.stderr
    listed = hpc.cli("cluster", "list", member="alice")
    assert "hpc1" in listed.stdout and "hpc2" in listed.stdout
    status = hpc.cli("status", "--json", member="carol")
    rows = {r["user"]: r for r in json.loads(status.stdout)}
    assert rows["alice"]["hpc1"] == "certificate" and rows["bob"]["hpc1"] == "missing"
    assert rows["alice"]["hpc2"] == "missing"
    own = json.loads(hpc.cli("status", "--json", member="alice").stdout)
    assert [r["user"] for r in own] == ["alice"]


def test_cert_writes_what_plain_openssh_needs(hpc: Hpc) -> None:
    out = hpc.work / "cert-out"
    done = hpc.cli("cert", "--cluster", "hpc1", "--out", str(out), token=hpc.launch("alice"))
    assert done.returncode == 0, done.stderr
    assert (out / "id_ed25519").stat().st_mode & 0o777 == 0o600
    ssh = subprocess.run(
        ["ssh", "-F", str(out / "ssh_config"), "-o", "BatchMode=yes", "hpc1", "id", "-un"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.strip() == "csalice"


def test_untrusted_host_and_closed_port_are_explained(hpc: Hpc) -> None:
    wrong_key = hpc.work / "wrong_host_key.pub"
    wrong_key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    made = hpc.cli(
        "cluster",
        "add",
        "spoofed",
        "--host",
        "127.0.0.1",
        "--port",
        str(hpc.sshd.port),
        "--host-key",
        str(wrong_key),
        "--username",
        "alice=csalice",
        member="carol",
    )
    assert made.returncode == 0, made.stderr
    done = hpc.cli("run", "--cluster", "spoofed", "--", "true", token=hpc.launch("alice"))
    assert done.returncode != 0 and "host key is not trusted" in done.stderr
    with bind_loopback() as down:  # bound, never listening: connections are refused
        made = hpc.cli("cluster", "add", "down", "--host", "127.0.0.1", "--port",
                       str(port_of(down)), "--host-key", str(wrong_key),
                       "--username", "alice=csalice", member="carol")  # fmt: skip
        done = hpc.cli("run", "--cluster", "down", "--", "true", token=hpc.launch("alice"))
    assert done.returncode != 0 and "connection refused" in done.stderr
    # A port that accepts connections but never speaks SSH.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        made = hpc.cli("cluster", "add", "silent", "--host", "127.0.0.1", "--port",
                       str(silent.getsockname()[1]), "--host-key", str(wrong_key),
                       "--username", "alice=csalice", member="carol")  # fmt: skip
        assert made.returncode == 0, made.stderr
        done = hpc.cli("run", "--cluster", "silent", "--connect-timeout", "2", "--", "true",
                       token=hpc.launch("alice"))  # fmt: skip
    assert done.returncode != 0 and "timed out after 2 s" in done.stderr


def _check(hpc: Hpc, directory: Path) -> subprocess.CompletedProcess[str]:
    return hpc.cli(
        "check",
        "--cluster",
        "hpc1",
        "--work-dir",
        str(directory),
        "--group",
        SHARED_GROUP,
        token=hpc.launch("alice"),
    )


def _apply_fixes(output: str) -> None:
    for line in output.splitlines():
        if line.strip().startswith("fix: "):
            command = line.strip().removeprefix("fix: ").split("  #", 1)[0]
            subprocess.run(["bash", "-c", command], check=True)  # as root, as an admin would


def test_check_finds_each_misconfiguration_and_its_fix_makes_it_pass(hpc: Hpc) -> None:
    work = hpc.shared / "work"
    work.mkdir(mode=0o775)  # owned by root:root: wrong group, no setgid, no default ACL
    work.chmod(0o775)
    bindir = hpc.shared / "slurm-bin"
    bindir.mkdir(exist_ok=True)
    bindir.chmod(0o755)
    first = _check(hpc, work)
    assert first.returncode == 1
    for fragment in (
        f"FAIL  group: {work} is group-owned by root",
        "FAIL  setgid",
        "FAIL  default ACL",
        "FAIL  scheduler: slurm commands missing",
    ):
        assert fragment in first.stdout, first.stdout
    assert "ok    membership" in first.stdout
    _apply_fixes(first.stdout)
    # The scheduler fix is the account's PATH: done the way the printed advice says.
    for name in ("sbatch", "squeue", "scancel"):
        tool = bindir / name
        tool.write_text("#!/bin/sh\necho fake\n")
        tool.chmod(0o755)
    set_bashrc(ACCOUNTS["alice"], f"export PATH={bindir}:$PATH\n")
    second = _check(hpc, work)
    assert second.returncode == 0, second.stdout
    assert "5 of 5 checks passed" in second.stdout


def test_check_finds_a_user_outside_the_shared_group(hpc: Hpc) -> None:
    made = hpc.cli(
        "cluster", "edit", "hpc1", "--username", "bob=csbob", "--keep-usernames", member="carol"
    )
    assert made.returncode == 0, made.stderr
    work = hpc.shared / "work-bob"
    work.mkdir()
    work.chmod(0o2775)
    subprocess.run(["chgrp", SHARED_GROUP, str(work)], check=True)
    subprocess.run(["setfacl", "-d", "-m", f"g:{SHARED_GROUP}:rwx,m::rwx", str(work)], check=True)
    done = hpc.cli(
        "check",
        "--cluster",
        "hpc1",
        "--work-dir",
        str(work),
        "--group",
        SHARED_GROUP,
        token=hpc.launch("bob"),
    )
    assert done.returncode == 1
    assert f"FAIL  membership: csbob is not in {SHARED_GROUP}" in done.stdout
    assert f"fix: usermod -aG {SHARED_GROUP} csbob" in done.stdout
