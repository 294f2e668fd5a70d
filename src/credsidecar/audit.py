"""Audit trail: one JSON line per security-relevant event.

Callers pass only identifiers (user, run, identity, jti, kid, expiry); the keys listed in
`FORBIDDEN_FIELDS` are refused outright so a token can never reach the trail by accident.
Fields can carry what a client sent (an audience, a path, a reason), so every value is bounded
(`bounded`): a client cannot make one line, or the file, large.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["AuditLog", "bounded"]

# Field names that would carry secret material; passing one is a programming error.
FORBIDDEN_FIELDS = frozenset(
    {"token", "access_token", "subject_token", "secret", "api_key", "private_key", "password"}
)
# Identifiers are far shorter than this (a 60 KB `audience` is an attack): a longer string is cut
# to its first MAX_FIELD_CHARS characters plus a marker with its full length.
MAX_FIELD_CHARS = 256
# Lists and dicts keep this many members (and a marker with the count) to this depth.
MAX_ITEMS = 32
MAX_DEPTH = 4
# Integers beyond 64 bits are not identifiers; their decimal form can be huge (or refused).
MAX_INT_BITS = 64


def bounded(value: Any, depth: int = 0) -> Any:
    """`value` with every string, list and dict in it cut to the limits above."""
    if isinstance(value, str):
        if len(value) <= MAX_FIELD_CHARS:
            return value
        return f"{value[:MAX_FIELD_CHARS]}...({len(value)} chars)"
    if isinstance(value, int) and not isinstance(value, bool):
        bits = value.bit_length()
        return value if bits <= MAX_INT_BITS else f"...(integer of {bits} bits)"
    if isinstance(value, list | tuple | dict):
        if depth >= MAX_DEPTH:
            return f"...({type(value).__name__} nested deeper than {MAX_DEPTH})"
        more = len(value) - MAX_ITEMS
        if isinstance(value, dict):
            kept = {bounded(k, depth + 1) if isinstance(k, str) else k: bounded(v, depth + 1)
                    for k, v in itertools.islice(value.items(), MAX_ITEMS)}  # fmt: skip
            if more > 0:
                kept["..."] = f"({more} more items)"
            return kept
        items = [bounded(v, depth + 1) for v in itertools.islice(value, MAX_ITEMS)]
        if more > 0:
            items.append(f"...({more} more items)")
        return items
    return value


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
        record = {"ts": round(self._clock(), 3), "event": bounded(event)}
        record.update({k: bounded(v) for k, v in fields.items() if v is not None})
        line = json.dumps(record, sort_keys=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._stream not in (sys.stderr, sys.stdout):
            self._stream.close()
