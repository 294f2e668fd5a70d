"""Keeps the policy in force current: reloads on SIGHUP and when the file changes.

A file that fails to parse is logged with its line and reason and the previous policy stays in
force, so a typo never locks every user out.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from credsidecar.audit import AuditLog
from credsidecar.errors import ConfigError
from credsidecar.issuer.policy import Policy, load_policy

__all__ = ["PolicyHolder"]

log = logging.getLogger(__name__)

# How often the file's mtime/size is compared; a change is picked up within this many seconds.
POLL_SECONDS = 1.0


class PolicyHolder:
    def __init__(self, path: Path, audit: AuditLog) -> None:
        self.path = path
        self._audit = audit
        self.current: Policy = load_policy(path)  # a bad file at start-up is fatal
        self._stamp = self._file_stamp()
        self.last_error: str | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self) -> bool:
        """Loads the file again; returns whether the new policy is now in force."""
        self._stamp = self._file_stamp()
        try:
            policy = load_policy(self.path)
        except ConfigError as exc:
            self.last_error = exc.message
            log.error("policy reload rejected, previous policy stays in force: %s", exc.message)
            self._audit.event("policy.rejected", file=str(self.path), reason=exc.message)
            return False
        self.current, self.last_error = policy, None
        log.info("policy reloaded from %s", self.path)
        self._audit.event(
            "policy.reloaded",
            file=str(self.path),
            users=len(policy.users),
            grants=len(policy.grants),
        )
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            # File system calls stay off the event loop, even a stat.
            if await asyncio.to_thread(self._file_stamp) != self._stamp:
                await asyncio.to_thread(self.reload)
