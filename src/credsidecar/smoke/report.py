"""The smoke report as a table for people and as JSON for programs."""

from __future__ import annotations

import json

from credsidecar.smoke.model import Result, Status
from credsidecar.smoke.runner import Report

__all__ = ["render_json", "render_table"]

_SHOWN = {Status.OK: "OK", Status.FAIL: "FAIL", Status.SKIPPED: "skipped",
          Status.NOT_CONFIGURED: "not configured"}  # fmt: skip


def lifetime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _who(result: Result) -> str:
    """The identity; for a check that yields none, what it verified, in parentheses."""
    if result.identity:
        return result.identity
    if result.status is Status.OK and result.detail:
        return f"({result.detail})"
    return "-"


def render_table(report: Report) -> str:
    header = ("CHECK", "RESULT", "IDENTITY", "LIFETIME", "MS")
    rows = [
        (r.check, _SHOWN[r.status], _who(r), lifetime(r.remaining),
         "-" if r.latency_ms is None else f"{r.latency_ms:.1f}")
        for r in report.results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row, result in zip([header, *rows], [None, *report.results], strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4].rjust(6)]).rstrip())
        if result is not None and result.status is not Status.OK and result.detail:
            lines.append(f"    -> {result.detail}")
    counts = {s: sum(r.status is s for r in report.results) for s in Status}
    summary = ", ".join(f"{n} {_SHOWN[s]}" for s, n in counts.items() if n)
    verdict = "all OK" if report.ok else ("FAILED" if report.configured else "nothing to check")
    lines.append(f"smoke: {verdict} ({summary}) in {report.seconds * 1000:.0f} ms")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    body = {
        "ok": report.ok,
        "exit_code": report.exit_code,
        "seconds": round(report.seconds, 3),
        "checks": [
            {"check": r.check, "result": r.status.value, "detail": r.detail,
             "identity": r.identity,
             "remaining_seconds": None if r.remaining is None else int(r.remaining),
             "latency_ms": r.latency_ms}
            for r in report.results
        ],
    }  # fmt: skip
    return json.dumps(body, indent=2) + "\n"
