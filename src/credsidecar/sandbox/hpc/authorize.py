"""Who may log in to a sandbox login node: the decision sshd makes with `TrustedUserCAKeys` and
`authorized_keys`, made here on the key blob a client offers, before asyncssh checks its
signature.

- A certificate must be a user certificate signed by the trusted CA (signature verified), name
  the login's username among its principals (never an empty list: sshd reads that as "any
  user"), be valid now, and carry no critical option this node does not enforce.
- A plain key must be one of the keys authorized for that username (stored-key mode).
- Either way the username must be one the node maps to its Unix account.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

__all__ = ["Decision", "authorize", "key_blob"]

_CERT_SUFFIX = b"-cert-v01@openssh.com"


@dataclass(frozen=True)
class Decision:
    ok: bool
    text: str  # what the log says: the key id accepted, or why the key was refused


def key_blob(line: str) -> bytes:
    """The wire form of an OpenSSH public key or certificate line ("TYPE BASE64 [comment]")."""
    return base64.b64decode(line.split()[1])


def _fingerprint(blob: bytes) -> str:
    """As OpenSSH prints it: SHA256:base64 without padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _algorithm(blob: bytes) -> bytes:
    size = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + size]


def authorize(
    username: str,
    blob: bytes,
    *,
    principals: Collection[str],
    user_ca: str | None,
    authorized_keys: Mapping[str, Collection[bytes]],
    now: float,
) -> Decision:
    """May `blob` (a public key or certificate, as the client sent it) log in as `username`?"""
    if username not in principals:
        return Decision(False, f"no account for {username!r} on this login node")
    if not _algorithm(blob).endswith(_CERT_SUFFIX):
        if blob in authorized_keys.get(username, ()):
            return Decision(True, f"key {_fingerprint(blob)} authorized for {username}")
        return Decision(False, f"key {_fingerprint(blob)} not authorized for {username}")
    if user_ca is None:
        return Decision(False, f"certificate for {username}: this login node trusts no user CA")
    try:
        identity = load_ssh_public_identity(_algorithm(blob) + b" " + base64.b64encode(blob))
    except (ValueError, TypeError) as exc:
        return Decision(False, f"unreadable certificate for {username}: {exc}")
    assert isinstance(identity, SSHCertificate)
    return _check_certificate(username, identity, user_ca, now)


def _check_certificate(username: str, cert: SSHCertificate, user_ca: str, now: float) -> Decision:
    key_id = cert.key_id.decode(errors="replace")
    where = f"certificate ID {key_id} (serial {cert.serial})"
    if cert.type is not SSHCertificateType.USER:
        return Decision(False, f"{where}: not a user certificate")
    signer = cert.signature_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    if signer.split()[:2] != user_ca.encode().split()[:2]:
        return Decision(False, f"{where}: signed by a CA this login node does not trust")
    try:
        cert.verify_cert_signature()
    except InvalidSignature:
        return Decision(False, f"{where}: the CA signature does not verify")
    names = [p.decode(errors="replace") for p in cert.valid_principals]
    if not names:
        return Decision(False, f"{where}: no principals (refused: that would mean any user)")
    if username not in names:
        return Decision(False, f"{where}: principal {username!r} not in {names}")
    if now < cert.valid_after:
        return Decision(False, f"{where}: not yet valid")
    if now >= cert.valid_before:
        return Decision(False, f"{where}: expired")
    if cert.critical_options:
        unknown = sorted(k.decode(errors="replace") for k in cert.critical_options)
        return Decision(False, f"{where}: critical options not enforced here: {unknown}")
    return Decision(True, f"{where} for principal {username}")
