"""A certificate authority made at run time, and a server certificate for 127.0.0.1 from it.

The Azure stand-ins need HTTPS: azure-core refuses to send a bearer token over plain http,
and azure-identity accepts only an https authority. Nothing here is ever committed: the keys
are generated on each start, and only their directory (mode 0700) holds them.

Files written to the directory it is given:
    ca.pem         the CA certificate alone: what NODE_EXTRA_CA_CERTS wants (Node adds it)
    ca-bundle.pem  this machine's trusted roots followed by the CA: for SSL_CERT_FILE and
                   REQUESTS_CA_BUNDLE, which *replace* the default roots, so a job that trusts
                   the sandbox can still reach real HTTPS hosts
    server.pem, server-key.pem   the server certificate (127.0.0.1, ::1, localhost) and key
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LocalCa", "create_local_ca"]

# Long enough for any dev session or test run; short enough that a leaked CA soon means nothing.
VALIDITY = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate a client clock slightly behind ours


@dataclass(frozen=True)
class LocalCa:
    ca_file: Path
    bundle_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _system_roots() -> bytes:
    """The roots this machine's OpenSSL trusts by default, if they are in one file."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes().rstrip(b"\n") + b"\n"
    return b""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_local_ca(directory: Path, name: str = "credsidecar sandbox CA") -> LocalCa:
    """Generates the CA and a server certificate, and writes them (blocking: use a thread)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    found = LocalCa(
        directory / "ca.pem",
        directory / "ca-bundle.pem",
        directory / "server.pem",
        directory / "server-key.pem",
    )
    found.ca_file.write_bytes(ca_pem)
    found.bundle_file.write_bytes(_system_roots() + ca_pem)
    found.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        found.key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return found
