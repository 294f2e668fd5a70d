"""Line numbers for semantic errors in TOML files.

`tomllib` reports lines only for syntax errors; once a file parses, a value that is wrong
("unknown identity") has lost its position. `line_of` finds it again from the key path, by
walking table headers and key assignments, so every policy error can say where to look.
"""

from __future__ import annotations

import re

__all__ = ["line_of", "syntax_error_line"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_SYNTAX_LINE = re.compile(r"at line (\d+)")


def _normalise(dotted: str) -> str:
    return ".".join(part.strip().strip('"').strip("'") for part in dotted.split("."))


def line_of(text: str, path: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of the value at `path` (e.g. ("grants", 2, "identities"))."""
    lines = text.splitlines()
    # Split the path into the table part and, if any, the key inside it.
    tables: list[str] = []
    index: int | None = None
    key: str | None = None
    for part in path:
        if isinstance(part, int):
            index = part
            break
        tables.append(part)
    remainder = path[len(tables) + (1 if index is not None else 0) :]
    if remainder and isinstance(remainder[0], str):
        key = remainder[0]

    # Try progressively shorter table prefixes: `[identities.aws.x]` holds key `role_arn`.
    for cut in range(len(tables), 0, -1):
        header, inner_keys = ".".join(tables[:cut]), tables[cut:]
        seen = -1
        for number, line in enumerate(lines):
            match = _HEADER.match(line)
            if not match or _normalise(match.group(2)) != header:
                continue
            is_array = match.group(1) == "[["
            if is_array:
                seen += 1
                if index is not None and seen != index:
                    continue
            wanted = inner_keys[0] if inner_keys else key
            if wanted is None:
                return number + 1
            for offset, body in enumerate(lines[number + 1 :], start=number + 2):
                if _HEADER.match(body):
                    break
                if re.match(rf"^\s*[\"']?{re.escape(wanted)}[\"']?\s*[=.]", body):
                    return offset
            return number + 1
    # A top-level key lives before the first table header.
    if path and isinstance(path[0], str):
        for number, line in enumerate(lines):
            if _HEADER.match(line):
                break
            if re.match(rf"^\s*[\"']?{re.escape(path[0])}[\"']?\s*=", line):
                return number + 1
    return None


def syntax_error_line(message: str) -> int | None:
    match = _SYNTAX_LINE.search(message)
    return int(match.group(1)) if match else None
