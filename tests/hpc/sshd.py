"""A real OpenSSH sshd on a loopback port, with real test accounts, for the HPC tests.

sshd runs as root (it must, to switch to the accounts), so these tests need root and the
openssh-server and acl packages; ./scripts/test installs both. The accounts (`csalice`,
`csbob`, `cscarol`) and the shared group `csgenomics` are created once per machine and reused.
The login node's identity: a host key with a certificate from a test host CA, so clusters can
trust the CA (`host_ca_key`) or pin the key (`host_keys`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.support.ports import candidate_port, start_on_candidate_ports
from tests.support.timing import scaled

SSHD = Path("/usr/sbin/sshd")
ACCOUNTS = {"alice": "csalice", "bob": "csbob", "carol": "cscarol"}
SHARED_GROUP = "csgenomics"


def require_host() -> None:
    """Fails (not skips: CI must run these) with what to do when the host cannot run them."""
    if os.geteuid() != 0:
        pytest.fail("the HPC tests start sshd and create test accounts: run them as root")
    for tool in (str(SSHD), "setfacl", "getfacl", "useradd", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: `apt-get install -y openssh-server "
                "openssh-client acl` (./scripts/test does this)"
            )


def ensure_accounts() -> None:
    if subprocess.run(["getent", "group", SHARED_GROUP], capture_output=True).returncode:
        subprocess.run(["groupadd", SHARED_GROUP], check=True)
    for linux in ACCOUNTS.values():
        try:
            pwd.getpwnam(linux)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", linux], check=True)
        # No password, but not locked ("!"): sshd without PAM refuses locked accounts.
        subprocess.run(["usermod", "-p", "*", linux], check=True)
    subprocess.run(["usermod", "-aG", SHARED_GROUP, ACCOUNTS["alice"]], check=True)
    # bob stays outside the shared group: the "user outside the group" case.
    subprocess.run(["gpasswd", "-d", ACCOUNTS["bob"], SHARED_GROUP], capture_output=True)


def home(linux: str) -> Path:
    return Path(pwd.getpwnam(linux).pw_dir)


def set_bashrc(linux: str, text: str) -> None:
    """What non-interactive SSH commands of that account read (bash runs ~/.bashrc for sshd)."""
    path = home(linux) / ".bashrc"
    path.write_text(text)
    shutil.chown(path, linux, linux)


def authorize_key(linux: str, public_key: str) -> None:
    ssh_dir = home(linux) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key.strip() + "\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        shutil.chown(path, linux, linux)


@dataclass
class Sshd:
    directory: Path
    port: int
    host_key: asyncssh.SSHKey
    host_ca: asyncssh.SSHKey
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def host_key_line(self) -> str:
        return self.host_key.export_public_key().decode().strip()

    @property
    def host_ca_line(self) -> str:
        return self.host_ca.export_public_key().decode().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sshd(directory: Path, trusted_user_ca: str) -> Sshd:
    """sshd on 127.0.0.1:<free port> trusting `trusted_user_ca` for user certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    key_file = directory / "ssh_host_ed25519_key"
    key_file.write_bytes(host_key.export_private_key())
    key_file.chmod(0o600)
    host_cert = host_ca.generate_host_certificate(
        host_key, "test login node", principals=["127.0.0.1", "localhost"]
    )
    (directory / "ssh_host_ed25519_key-cert.pub").write_bytes(host_cert.export_certificate())
    (directory / "trusted_user_ca.pub").write_text(trusted_user_ca.strip() + "\n")
    config = directory / "sshd_config"
    log = directory / "sshd.log"
    ports = [candidate_port()]  # sshd names its port in its config: see tests.support.ports

    def launch() -> tuple[int, subprocess.Popen[bytes]]:
        port = ports[-1]
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {key_file}",
                    f"HostCertificate {directory / 'ssh_host_ed25519_key-cert.pub'}",
                    f"TrustedUserCAKeys {directory / 'trusted_user_ca.pub'}",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin no",
                    f"PidFile {directory / 'sshd.pid'}",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=out, stderr=out
            )
        deadline = time.monotonic() + scaled(15)
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                raise AssertionError(f"sshd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return port, proc

    port, proc = start_on_candidate_ports(launch, log, ports.append)
    return Sshd(directory, port, host_key, host_ca, proc)
