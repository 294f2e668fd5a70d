"""Where the sidecar gets its launch token: a file (re-read when it rotates), a variable, stdin.

One small protocol, so a test can hand in a `StaticTokenSource` as easily as a real file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from credsidecar.errors import ConfigError, Unavailable

__all__ = ["EnvTokenSource", "FileTokenSource", "StaticTokenSource", "TokenSource"]


class TokenSource(Protocol):
    """Returns the current token; called before every exchange."""

    async def read(self) -> str: ...

    @property
    def description(self) -> str: ...


class StaticTokenSource:
    def __init__(self, token: str, description: str = "a token given at start-up") -> None:
        token = token.strip()
        if not token:
            raise ConfigError(f"{description} is empty; pass the launch token")
        self._token = token
        self._description = description

    async def read(self) -> str:
        return self._token

    @property
    def description(self) -> str:
        return self._description


class EnvTokenSource(StaticTokenSource):
    """Reads the variable once and removes it, so child processes do not inherit the token."""

    def __init__(self, variable: str) -> None:
        value = os.environ.pop(variable, "")
        super().__init__(value, f"environment variable {variable}")


class FileTokenSource:
    """Re-reads the file whenever its inode, size or mtime changes (rotating tokens)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    @property
    def description(self) -> str:
        return f"token file {self._path}"

    def _read_sync(self) -> str:
        try:
            st = self._path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                token = self._path.read_text(encoding="utf-8").strip()
                if not token:
                    raise Unavailable(f"{self.description} is empty; is it still being written?")
                self._token, self._stamp = token, stamp
        except OSError as exc:
            if self._token:
                return self._token  # a rotation in progress; the previous token still stands
            raise Unavailable(f"cannot read {self.description}: {exc.strerror}") from exc
        return self._token

    async def read(self) -> str:
        return await asyncio.to_thread(self._read_sync)
