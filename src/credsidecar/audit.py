"""Audit trail: one JSON line per security-relevant event.

Callers pass only identifiers (user, run, identity, jti, kid, expiry); the keys listed in
`FORBIDDEN_FIELDS` are refused outright so a token can never reach the trail by accident.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["AuditLog"]

# Field names that would carry secret material; passing one is a programming error.
FORBIDDEN_FIELDS = frozenset(
    {"token", "access_token", "subject_token", "secret", "api_key", "private_key", "password"}
)


class AuditLog:
    """Appends JSON lines to a file (or a stream); safe to call from threads."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(cls, target: str | Path | None, clock: Callable[[], float] = time.time) -> AuditLog:
        """`None` or "-" writes to stderr; anything else is a file opened for append."""
        if target is None or str(target) == "-":
            return cls(sys.stderr, clock)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8", buffering=1), clock)

    def event(self, event: str, **fields: Any) -> None:
        leaked = FORBIDDEN_FIELDS.intersection(fields)
        if leaked:
            raise ValueError(f"audit event {event!r} must not carry secret fields {sorted(leaked)}")
        record = {"ts": round(self._clock(), 3), "event": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, sort_keys=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._stream not in (sys.stderr, sys.stdout):
            self._stream.close()
