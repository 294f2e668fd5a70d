"""An issuer built in-process from the example policy, with an injectable clock, composed the
way the runner composes it (assembly.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from credsidecar.audit import AuditLog
from credsidecar.issuer.assembly import Issuer, assemble
from credsidecar.issuer.config import IssuerConfig, load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.store import Store
from tests.support.clock import FakeClock


@dataclass
class IssuerFixture:
    service: Issuer
    config: IssuerConfig
    api_key: str
    directory: Path
    clock: FakeClock

    def audit_events(self) -> list[dict[str, object]]:
        path = Path(str(self.config.audit_log))
        return [json.loads(line) for line in path.read_text().splitlines()]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def issuer(tmp_path: Path, clock: FakeClock) -> Iterator[IssuerFixture]:
    config_path, api_key = write_example(tmp_path, port=8400)
    config = load_config(config_path)
    audit = AuditLog.open(config.audit_log, clock)
    store = Store(config.database)
    keys = KeyRing(config.key_dir, store, config.key_algorithm, clock)
    holder = PolicyHolder(config.policy_path, audit)
    service = assemble(config, store, keys, holder, audit, clock)
    yield IssuerFixture(service, config, api_key, tmp_path, clock)
    store.close()
    audit.close()
