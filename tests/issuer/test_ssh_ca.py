"""The SSH CA's certificates, read back by OpenSSH's own ssh-keygen."""

from __future__ import annotations

import stat
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh
import pytest

from credsidecar.errors import BadRequest
from credsidecar.issuer.ssh_ca import CLOCK_SKEW, SshCa

NOW = 1_800_000_000


def describe(tmp_path: Path, certificate: str) -> str:
    """`ssh-keygen -L`: OpenSSH's view of a certificate."""
    path = tmp_path / "key-cert.pub"
    path.write_text(certificate + "\n")
    done = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def user_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def test_a_certificate_names_one_principal_the_user_and_run_and_no_extensions(
    tmp_path: Path,
) -> None:
    ca = SshCa(tmp_path / "keys")
    signed = ca.sign(user_key(), "csalice", "credsidecar:alice:run-7:hpc1", NOW, NOW + 900, 42)
    text = describe(tmp_path, signed.certificate)
    assert 'Key ID: "credsidecar:alice:run-7:hpc1"' in text
    assert "Principals: \n                csalice\n" in text
    assert "Critical Options: (none)" in text and "Extensions: (none)" in text
    assert "Serial: 42" in text
    cert = asyncssh.import_certificate(signed.certificate)
    assert cert.principals == ["csalice"]
    assert (signed.valid_after, signed.valid_before) == (NOW - CLOCK_SKEW, NOW + 900)
    # Signed by this CA: the line an admin adds to TrustedUserCAKeys.
    ca_key = asyncssh.import_public_key(ca.public_key_line())
    assert cert.signing_key.public_data == ca_key.public_data


def test_the_ca_key_is_private_and_stable_across_instances(tmp_path: Path) -> None:
    first = SshCa(tmp_path / "keys").public_key_line()
    assert SshCa(tmp_path / "keys").public_key_line() == first
    mode = (tmp_path / "keys" / "ssh-ca").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize(
    ("public_key", "words"),
    [
        ("", "one OpenSSH public key line"),
        ("ssh-ed25519 not-base64", "not an OpenSSH public key"),
        (
            asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_public_key().decode(),
            "2048 bits",
        ),
    ],
)
def test_keys_it_will_not_sign(tmp_path: Path, public_key: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        SshCa(tmp_path / "keys").sign(public_key, "csalice", "id", NOW, NOW + 60, 1)


def test_an_empty_principal_is_never_signed(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="without a principal"):
        SshCa(tmp_path / "keys").sign(user_key(), "", "id", NOW, NOW + 60, 1)


def _private_forms() -> list[tuple[str, str]]:
    ed25519 = asyncssh.generate_private_key("ssh-ed25519")
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    return [
        ("openssh", ed25519.export_private_key().decode()),
        ("openssh-encrypted", ed25519.export_private_key(passphrase="pw").decode()),
        ("pkcs8", ed25519.export_private_key("pkcs8-pem").decode()),
        ("pkcs8-encrypted", ed25519.export_private_key("pkcs8-pem", passphrase="pw").decode()),
        ("sec1-ec", ecdsa.export_private_key("pkcs1-pem").decode()),
    ]


@pytest.mark.parametrize(("form", "private_key"), _private_forms())
def test_a_private_key_sent_as_the_public_key_is_refused_as_leaked(
    tmp_path: Path, form: str, private_key: str
) -> None:
    """asyncssh reads the public half out of each of these; the CA must not sign it."""
    with pytest.raises(BadRequest) as refused:
        SshCa(tmp_path / "keys").sign(private_key, "csalice", "id", NOW, NOW + 60, 1)
    message = refused.value.message
    assert "that is a private key; send the .pub file" in message
    assert "treat this key as leaked" in message
    body = "".join(private_key.strip().splitlines()[1:-1])
    assert body[:24] not in message and "BEGIN" not in message  # the key is never echoed


def test_workers_creating_the_ca_at_once_all_get_the_same_whole_key(tmp_path: Path) -> None:
    # Separate instances (as separate worker processes would be), started together.
    start = threading.Barrier(8)

    def first_use() -> str:
        ca = SshCa(tmp_path)
        start.wait()
        return ca.public_key_line()

    with ThreadPoolExecutor(8) as pool:
        lines = list(pool.map(lambda _: first_use(), range(8)))
    assert len(set(lines)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ssh-ca"]  # no temporary file left
    assert (tmp_path / "ssh-ca").stat().st_mode & 0o777 == 0o600
