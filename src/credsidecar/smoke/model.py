"""What a smoke check reports: its status, the contract it broke, the identity and lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Found", "Result", "Skip", "Status", "Violation"]


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    # Configured, but not applicable (e.g. no ID tokens without a service account).
    SKIPPED = "skipped"
    NOT_CONFIGURED = "not configured"


class Violation(Exception):
    """A check's finding: one sentence naming what the endpoint did and what the SDKs need."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Found:
    """What a passing check learnt: who the credentials are for and how long they last."""

    identity: str | None = None
    remaining: float | None = None  # seconds of credential lifetime left at the response
    note: str = ""


@dataclass(frozen=True)
class Result:
    check: str  # e.g. "aws.container"
    status: Status
    detail: str = ""  # the violation, the skip reason, or a note on success
    identity: str | None = None
    remaining: float | None = None
    latency_ms: float | None = None

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL
