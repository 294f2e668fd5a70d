"""The paths a run will use, from what the user wrote, as `Target`s.

Accepted forms (`parse_target`):
    s3://BUCKET[/PREFIX]                                      AWS S3
    gs://BUCKET[/PREFIX]                                      Google Cloud Storage
    az://ACCOUNT/CONTAINER[/PREFIX]                           Azure Blob storage
    https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]  the same, as Azure writes it
    ssh://CLUSTER/PATH                                        an HPC work directory
The prefix is kept as written: a directory (`out/`), a key prefix (`out/run1`), or one object
(a samplesheet's `reads/a_R1.fq.gz`), which a listing under that prefix finds.

`targets_from_args` gathers them from the command line: `--read` paths (read), `--write` paths
(write), `--work-dir` (read, write and delete), `--paths-from` files (one path per line, `#`
comments, an optional leading `read`, `write` or `work-dir` word; read by default) and
Nextflow-style samplesheets (every cell holding a cloud URI, read). One path named twice is
checked once, with the union of the accesses asked for it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from credsidecar.errors import BadRequest
from credsidecar.preflight.model import Access, Target

__all__ = [
    "FORMS",
    "READ",
    "WORK_DIR",
    "WRITE",
    "TargetError",
    "is_cloud_uri",
    "parse_target",
    "targets_from_args",
]

READ = frozenset({Access.READ})
WRITE = frozenset({Access.WRITE})
WORK_DIR = frozenset({Access.READ, Access.WRITE, Access.DELETE})
FORMS = (
    "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://ACCOUNT/CONTAINER/PREFIX, "
    "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX or ssh://CLUSTER/PATH"
)
# The clouds' own naming rules, so a typo is caught here rather than as "not found" later.
# S3: 3-63 of [a-z0-9.-] (older us-east-1 buckets may hold _ and capitals; so may GCS's _).
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,220}[A-Za-z0-9]")
_AZURE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_AZURE_CONTAINER = re.compile(r"\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_AZURE_HOST = ".blob.core.windows.net"
_CLOUD = {"s3": "aws", "gs": "gcp"}
_ACCESS_WORDS = {"read": READ, "write": WRITE, "work-dir": WORK_DIR, "workdir": WORK_DIR}
# Whole-line and trailing comments: `#` at the start or after blanks (S3 keys may hold `#`).
_COMMENT = re.compile(r"(^|\s)#.*$")


class TargetError(BadRequest, ValueError):
    """A path preflight cannot check: the message names it, why, and the accepted forms."""


def _shown(uri: str) -> str:
    """`uri` fit for a message: a URL's query (an Azure SAS token) and any user:password@
    are not repeated."""
    scheme, sep, rest = uri.partition("://")
    if "?" in rest:
        rest = rest.split("?", 1)[0] + "?..."
    if "@" in rest.split("/", 1)[0]:
        rest = "...@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _error(uri: str, why: str, where: str = "") -> TargetError:
    place = f" ({where})" if where else ""
    return TargetError(
        f"{_shown(uri)!r}{place} is not a path preflight can check: {why}; use {FORMS}."
    )


def is_cloud_uri(text: str) -> bool:
    """Whether `text` is written like a cloud storage URI (a samplesheet cell worth checking)."""
    lowered = text.strip().lower()
    if lowered.startswith(("s3://", "gs://", "az://")):
        return True
    if lowered.startswith("https://"):
        host = urlsplit(lowered).hostname or ""
        return host.endswith(_AZURE_HOST)
    return False


def parse_target(uri: str, access: frozenset[Access], where: str = "") -> Target:
    """`uri` as a Target needing `access`; TargetError (naming `where`, e.g. `file:3`) if it
    is not one of the accepted forms.

    After `s3://BUCKET/`, `gs://BUCKET/`, `az://ACCOUNT/CONTAINER/` and `ssh://CLUSTER/` the
    rest is the key prefix or path exactly as written (keys may hold `#`, `?` and `%`, as the
    aws CLI and gsutil take them); an https:// URL is a URL: percent-escapes are decoded and a
    query (a SAS token) is refused."""
    if not access:
        raise _error(uri, "no access (read, write, delete) was asked for it", where)
    if uri != uri.strip() or not uri:
        raise _error(uri, "it is empty or has blanks around it", where)
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else ""
    host, _, path = rest.partition("/")
    if "@" in host:
        raise _error(uri, "it names a user or password", where)
    if scheme in _CLOUD:
        if not _BUCKET.fullmatch(host):
            raise _error(uri, f"{host!r} is not a bucket name" if host else "no bucket", where)
        return Target(uri, _CLOUD[scheme], host, None, path, access)
    if scheme == "az":
        return _azure(uri, host, path, access, where)
    if scheme == "https":
        return _https(uri, access, where)
    if scheme == "ssh":
        if not _CLUSTER.fullmatch(host):
            raise _error(uri, f"{host!r} is not a cluster name" if host else "no cluster", where)
        if not path:
            raise _error(uri, "it names no directory on the cluster", where)
        # ssh://cluster/~/work is the home-relative ~/work; anything else an absolute path.
        directory = path if path.startswith("~") else "/" + path
        return Target(uri, "hpc", host, None, directory, access)
    why = f"the scheme {scheme + '://'!r} is unknown" if scheme else "it has no scheme"
    raise _error(uri, why, where)


def _https(uri: str, access: frozenset[Access], where: str) -> Target:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise _error(uri, str(exc), where) from exc
    host = (parts.hostname or "").lower()
    if not host.endswith(_AZURE_HOST):
        raise _error(uri, f"https:// URLs name Azure Blob storage only (ACCOUNT{_AZURE_HOST})",
                     where)  # fmt: skip
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise _error(uri, "it has a query or fragment (a SAS token is not needed)", where)
    if parts.username or parts.password or port is not None:
        raise _error(uri, "it names a user, password or port", where)
    path = unquote(parts.path).removeprefix("/")
    return _azure(uri, host[: -len(_AZURE_HOST)], path, access, where)


def _azure(uri: str, account: str, path: str, access: frozenset[Access], where: str) -> Target:
    if not _AZURE_ACCOUNT.fullmatch(account):
        raise _error(uri, f"{account!r} is not a storage account name", where)
    container, _, prefix = path.partition("/")
    if not _AZURE_CONTAINER.fullmatch(container):
        why = f"{container!r} is not a blob container name" if container else "no container"
        raise _error(uri, why, where)
    return Target(uri, "azure", account, container, prefix, access)


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # spreadsheet exports start with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TargetError(f"Cannot read {flag} {str(path)!r}: {reason}.") from exc


def _from_paths_file(path: Path) -> Iterable[Target]:
    for number, raw in enumerate(_read_text(path, "--paths-from").splitlines(), 1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        access = _ACCESS_WORDS.get(word.lower())
        uri = rest.strip() if access is not None else line
        if access is not None and not uri:
            raise _error(line, f"`{word}` must be followed by a path", f"{path}:{number}")
        yield parse_target(uri, access or READ, f"{path}:{number}")


def _from_samplesheet(path: Path) -> Iterable[Target]:
    rows = csv.reader(_read_text(path, "--samplesheet").splitlines())
    for number, row in enumerate(rows, 1):
        for column, cell in enumerate(row, 1):
            if is_cloud_uri(cell):
                yield parse_target(cell.strip(), READ, f"{path}:{number}, column {column}")


def targets_from_args(
    read: Sequence[str],
    write: Sequence[str],
    work_dirs: Sequence[str],
    paths_from: Sequence[Path],
    samplesheets: Sequence[Path],
) -> list[Target]:
    """Every target the arguments name, each once (in the order first named), with the union
    of the accesses asked for it. Reads the files (blocking: call it before the event loop or
    in a thread). TargetError for the first path or file that cannot be used."""
    found: list[Target] = [
        *(parse_target(uri, READ) for uri in read),
        *(parse_target(uri, WRITE) for uri in write),
        *(parse_target(uri, WORK_DIR) for uri in work_dirs),
    ]
    for file in paths_from:
        found.extend(_from_paths_file(file))
    for sheet in samplesheets:
        found.extend(_from_samplesheet(sheet))
    merged: dict[tuple[str, str, str | None, str], Target] = {}
    for target in found:
        # az:// and https:// spellings of one path are one target; the first spelling is kept.
        key = (target.cloud, target.location, target.container, target.prefix)
        first = merged.get(key)
        if first is None:
            merged[key] = target
        elif not target.access <= first.access:
            merged[key] = Target(
                first.uri, first.cloud, first.location, first.container, first.prefix,
                first.access | target.access,
            )  # fmt: skip
    return list(merged.values())
