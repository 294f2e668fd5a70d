"""One SSH CA for every replica: sealed in a shared store, created once by the first replica."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.config import IssuerConfig
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.ssh_ca import CA_ROW, SshCa, configured_ca_public_key
from credsidecar.issuer.store import Store, open_store
from tests.support.postgres import issuer_config_on

KEK = bytes(range(32))
NOW = 1_800_000_000


def _config(tmp_path: Path, url: str | None) -> IssuerConfig:
    return issuer_config_on(tmp_path, url, kek_env="TEST_KEK")


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> IssuerConfig:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return _config(tmp_path, url)


@pytest.fixture
def stores(config: IssuerConfig) -> Iterator[tuple[Store, Store]]:
    pair = open_store(config), open_store(config)
    yield pair
    for store in pair:
        store.close()


def test_replicas_sign_with_one_ca_created_by_the_first(
    tmp_path: Path, stores: tuple[Store, Store]
) -> None:
    first = SshCa(tmp_path / "a", store=stores[0], sealer=Sealer(KEK))
    second = SshCa(tmp_path / "b", store=stores[1], sealer=Sealer(KEK))
    assert first.public_key_line() == second.public_key_line()
    user = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    signed = second.sign(user, "csalice", "credsidecar:alice:r1:hpc1", NOW, NOW + 60, 1)
    ca_key = asyncssh.import_public_key(first.public_key_line())
    cert = asyncssh.import_certificate(signed.certificate)
    assert cert.signing_key.public_data == ca_key.public_data
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no key file


def test_the_stored_ca_key_is_sealed(tmp_path: Path, stores: tuple[Store, Store]) -> None:
    SshCa(tmp_path, store=stores[0], sealer=Sealer(KEK))
    sealed = stores[0].get_secret(CA_ROW)
    assert sealed is not None
    assert b"PRIVATE KEY" not in sealed and b"openssh-key" not in sealed


def test_a_replica_with_another_kek_or_none_refuses_to_start(
    tmp_path: Path, stores: tuple[Store, Store]
) -> None:
    SshCa(tmp_path, store=stores[0], sealer=Sealer(KEK))
    with pytest.raises(ConfigError, match=r"SSH CA key .* does not open with the configured"):
        SshCa(tmp_path, store=stores[1], sealer=Sealer(bytes(32)))
    with pytest.raises(ConfigError, match="no key-encryption key is configured"):
        SshCa(tmp_path, store=stores[1])


def test_ca_public_key_from_the_config_reads_where_the_issuer_keeps_it(
    config: IssuerConfig, stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEK", base64.b64encode(KEK).decode())
    if config.store.postgres:
        expected = SshCa(config.key_dir, store=stores[0], sealer=Sealer(KEK)).public_key_line()
    else:
        expected = SshCa(config.key_dir).public_key_line()
    assert configured_ca_public_key(config) == expected
