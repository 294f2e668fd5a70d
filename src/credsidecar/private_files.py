"""Private directories and files that another local user cannot plant, swap or read.

A predictable path in a shared place (`/tmp/credsidecar-UID`, a temporary name next to an
`--env-file` in a shared directory) is a place another user can reach first: a directory they
own is one where they can swap our files, an `env` file they wrote runs their commands when
the job evals it, and a temporary file they pre-created hands them what we write into it. So:

- a private directory is a real directory (not a symbolic link), owned by our effective uid,
  with no group or other access; we create it 0700 when it is missing and check it afterwards
  (someone may have created it between our look and our mkdir);
- files are created under an unpredictable name with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600,
  checked on the open descriptor, then renamed into place;
- a private file is read only after the descriptor we opened (`O_NOFOLLOW`) shows a regular
  file of ours, 0600-style, in a private directory.

Root gets no exception: a root job must not trust a file a user planted for it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from credsidecar.errors import ConfigError

__all__ = [
    "FileId",
    "ensure_private_dir",
    "read_private_text",
    "remove_private",
    "write_private_atomic",
]

log = logging.getLogger(__name__)

# (st_dev, st_ino): which file we wrote, so we delete that one and never its replacement.
FileId = tuple[int, int]

_DEFAULT_REMEDY = "remove it, or use a directory only you can reach"
_GROUP_OTHER = 0o077
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse_not_ours(st: os.stat_result, what: str, path: Path, remedy: str) -> None:
    """Raises unless `st` is ours (effective uid) and closed to group and others."""
    me = os.geteuid()
    if st.st_uid != me:
        raise ConfigError(
            f"{what} {path} is owned by uid {st.st_uid}, not you (uid {me}): someone else may "
            f"have planted it; {remedy}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER:
        # Without write access for others nothing can have been planted, so chmod is safe.
        fix = f"`chmod go= {path}` or " if not mode & 0o022 else ""
        raise ConfigError(
            f"{what} {path} has mode {mode:04o}, so other users can reach it; {fix}{remedy}"
        )


def _open_private_dir(path: Path, what: str, remedy: str) -> int:
    """A descriptor of `path` once it shows a real directory of ours, closed to others.

    Raises FileNotFoundError when it does not exist, ConfigError when it is not private."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # Linux says ENOTDIR for a link under O_DIRECTORY|O_NOFOLLOW, and EACCES for another
        # user's 0700 directory: lstat says which, for the message.
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if exc.errno == errno.ELOOP or (st is not None and stat.S_ISLNK(st.st_mode)):
            raise ConfigError(
                f"{what} {path} is a symbolic link, not a directory: someone else may have "
                f"planted it; {remedy}"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise ConfigError(f"{what} {path} is not a directory; {remedy}") from None
        if st is not None:
            _refuse_not_ours(st, what, path, remedy)
        raise ConfigError(f"cannot open {what} {path} ({exc.strerror}); {remedy}") from None
    try:
        _refuse_not_ours(os.fstat(fd), what, path, remedy)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_dir(
    path: Path, *, what: str = "directory", remedy: str = _DEFAULT_REMEDY
) -> Path:
    """`path` as a private directory: created 0700 when missing (its parents as usual), and
    refused with a ConfigError naming the problem when it is not ours, not a real directory,
    or open to group or others. Never chmods or takes over what is there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path} ({exc.strerror}); {remedy}") from None
    # Checked after mkdir whether or not it created the directory: another user may have made
    # it (or a link in its place) between our look and our mkdir.
    os.close(_open_private_dir(path, what, remedy))
    return path


def write_private_atomic(path: Path, text: str) -> FileId:
    """Writes `text` to `path`, mode 0600, whole or not at all; returns which file it wrote.

    The temporary file gets an unpredictable name in `path`'s directory and is created with
    `O_EXCL|O_NOFOLLOW`, so a file or link someone pre-created there is never written through;
    the rename then replaces `path` in one step (a waiting job never sees half a file). When
    `path` is a symbolic link, the rename replaces the link itself: the text never goes where
    the link points. Missing parent directories are created with the usual mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                st = os.fstat(fd)
                # O_EXCL means we created it; this catches file systems that ignore the
                # owner or mode asked for (some network and FAT mounts).
                _refuse_not_ours(st, "new file", path.parent / tmp,
                                 f"write {path.name} to a local directory instead")  # fmt: skip
                handle.write(text)
            os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        return st.st_dev, st.st_ino
    finally:
        os.close(dir_fd)


def read_private_text(
    path: Path, *, directory: str = "directory", remedy: str = _DEFAULT_REMEDY
) -> str:
    """The text of `path` once its directory is private and the file is ours: a regular file
    (not a link), one link, no group or other access. Checked on the descriptors opened, so
    nothing can be swapped in between. FileNotFoundError when the directory or file is missing;
    ConfigError, naming the problem, when either is not private."""
    dir_fd = _open_private_dir(path.parent, directory, remedy)
    try:
        try:
            # O_NONBLOCK: a FIFO must not hang us before fstat can refuse it.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(path.name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    f"{path} is a symbolic link, not a file: someone else may have planted it; "
                    f"{remedy}"
                ) from None
            raise
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path} is not a regular file; {remedy}")
            _refuse_not_ours(st, "file", path, remedy)
            if st.st_nlink != 1:
                # A hard link to another file of ours, made by someone with access to the
                # directory, would have us print that file's text.
                raise ConfigError(f"{path} has {st.st_nlink} hard links, expected 1; {remedy}")
            return handle.read()
    finally:
        os.close(dir_fd)


def remove_private(path: Path, written: FileId) -> bool:
    """Deletes `path` if it is still the file `write_private_atomic` returned `written` for;
    a file that replaced it is someone else's to remove and stays (with a warning)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if (st.st_dev, st.st_ino) != written:
        log.warning("%s was replaced after credsidecar wrote it; leaving the new file alone", path)
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
