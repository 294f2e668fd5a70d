"""The audit trail: one JSON line per event, secrets refused, every field bounded in size."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from credsidecar.audit import MAX_DEPTH, MAX_FIELD_CHARS, MAX_ITEMS, AuditLog
from credsidecar.errors import CredsidecarError
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.service import IssuerService
from credsidecar.issuer.store import Store
from tests.support.clock import FakeClock


def logged(**fields: Any) -> tuple[dict[str, Any], str]:
    stream = io.StringIO()
    AuditLog(stream, clock=lambda: 1_700_000_000.0).event("test.event", **fields)
    line = stream.getvalue()
    return json.loads(line), line


def test_short_fields_are_written_as_given() -> None:
    record, _ = logged(user="alice", expiry=1_700_003_600, groups=["a", "b"], ok=True)
    assert record == {"ts": 1_700_000_000.0, "event": "test.event", "user": "alice",
                      "expiry": 1_700_003_600, "groups": ["a", "b"], "ok": True}  # fmt: skip


def test_a_long_string_field_is_cut_with_its_length() -> None:
    record, line = logged(audience="x" * 60_000)
    assert record["audience"] == "x" * MAX_FIELD_CHARS + "...(60000 chars)"
    assert len(line) < 2 * MAX_FIELD_CHARS


def test_strings_inside_lists_and_dicts_are_cut_and_their_size_bounded() -> None:
    record, line = logged(scopes=["s" * 5_000] * 10_000, claims={"k" * 5_000: "v" * 5_000, "n": 1})
    assert len(record["scopes"]) == MAX_ITEMS + 1
    assert record["scopes"][0] == "s" * MAX_FIELD_CHARS + "...(5000 chars)"
    assert record["scopes"][-1] == f"...({10_000 - MAX_ITEMS} more items)"
    assert record["claims"] == {"k" * MAX_FIELD_CHARS + "...(5000 chars)":
                                "v" * MAX_FIELD_CHARS + "...(5000 chars)", "n": 1}  # fmt: skip
    assert len(line) < MAX_ITEMS * 2 * MAX_FIELD_CHARS


def test_deep_nesting_and_huge_integers_are_summarised() -> None:
    nested: Any = "leaf"
    for _ in range(30_000):
        nested = [nested]
    record, line = logged(nested=nested, number=10**5000)
    depth, inner = 0, record["nested"]
    while isinstance(inner, list):
        depth, inner = depth + 1, inner[0]
    assert depth == MAX_DEPTH and inner == f"...(list nested deeper than {MAX_DEPTH})"
    assert record["number"].startswith("...(integer of ")
    assert len(line) < 500


def test_secret_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="must not carry secret fields"):
        AuditLog(io.StringIO()).event("oops", access_token="ya29.x")


def test_the_issuers_refusal_of_a_huge_audience_writes_a_short_line(
    tmp_path: Path, clock: FakeClock
) -> None:
    """200 exchanges with a 60 KB audience once wrote 12 MB of audit trail."""
    config = load_config(write_example(tmp_path, port=8400)[0])
    audit = AuditLog.open(config.audit_log, clock)
    store = Store(config.database)
    try:
        keys = KeyRing(config.key_dir, store, config.key_algorithm, clock)
        service = IssuerService(config, store, keys, PolicyHolder(config.policy_path, audit),
                                audit, clock)  # fmt: skip
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": "not-a-jwt",
            "audience": "a" * 60_000,
        }
        for _ in range(200):
            with pytest.raises(CredsidecarError):
                service.exchange(form)
    finally:
        store.close()
        audit.close()
    lines = Path(str(config.audit_log)).read_text().splitlines()
    refused = [json.loads(line) for line in lines if "token.exchange_refused" in line]
    assert len(refused) == 200
    assert refused[0]["audience"].endswith("...(60000 chars)")
    assert sum(len(line) for line in lines) < 200 * 2_000
