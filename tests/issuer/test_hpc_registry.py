"""Cluster settings owners send: what is accepted and the reason for each refusal."""

from __future__ import annotations

from typing import Any

import asyncssh
import pytest

from credsidecar.errors import BadRequest
from credsidecar.issuer.hpc_registry import parse_cluster

MEMBERS = {"alice": object(), "bob": object()}
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def cluster(**settings: Any) -> dict[str, Any]:
    return {"host": "login.hpc.example.org", "host_keys": [HOST_KEY], **settings}


def test_a_certificate_cluster_and_its_known_hosts() -> None:
    parsed = parse_cluster("hpc-1", cluster(port=2222, usernames={"alice": "ali"},
                                            host_ca_key=HOST_KEY), MEMBERS)  # fmt: skip
    assert (parsed.scheduler, parsed.mode, parsed.port) == ("slurm", "certificate", 2222)
    assert parsed.known_hosts().splitlines() == [
        f"[login.hpc.example.org]:2222 {HOST_KEY}",
        f"@cert-authority [login.hpc.example.org]:2222 {HOST_KEY}",
    ]
    assert parse_cluster("h", cluster(), MEMBERS).host_pattern == "login.hpc.example.org"


@pytest.mark.parametrize(
    ("name", "settings", "words"),
    [
        ("bad name!", cluster(), "letters, digits, dashes or underscores"),
        ("c", cluster(scheduler="kubernetes"), "is not one of"),
        ("c", cluster(host="a b"), "host must be"),
        ("c", cluster(port=0), "between 1 and 65535"),
        ("c", cluster(mode="password"), "mode must be one of"),
        ("c", {"host": "h"}, "never trusted on first use"),
        ("c", cluster(host_keys=["ssh-ed25519 nope"]), "host_keys[0] is not an OpenSSH"),
        ("c", cluster(usernames={"mallory": "root"}), "'mallory', who is not a member"),
        ("c", cluster(usernames={"alice": "Root Account"}), "not a Linux username"),
        ("c", cluster(mode="stored-key", usernames={"alice": "a"}), "apply to certificate"),
        ("c", cluster(password="x"), "unknown cluster setting"),
    ],
)
def test_refusals_name_the_setting(name: str, settings: dict[str, Any], words: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_cluster(name, settings, MEMBERS)
    assert words in refused.value.message


def test_an_edit_keeps_what_it_does_not_change() -> None:
    base = parse_cluster("c", cluster(usernames={"alice": "ali"}), MEMBERS)
    edited = parse_cluster("c", {"port": 2200}, MEMBERS, base=base)
    assert (edited.port, edited.host, dict(edited.usernames)) == (2200, base.host, {"alice": "ali"})


@pytest.mark.parametrize("field", ["host_ca_key", "host_keys"])
def test_a_private_host_key_is_refused_as_leaked_without_being_echoed(field: str) -> None:
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    value: Any = private if field == "host_ca_key" else [private]
    with pytest.raises(BadRequest) as refused:
        parse_cluster("c", cluster(**{field: value}), MEMBERS)
    assert "private key" in refused.value.message and "leaked" in refused.value.message
    assert private.splitlines()[1] not in refused.value.message
