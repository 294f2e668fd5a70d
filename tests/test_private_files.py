"""Private directories and files: what another local user plants, swaps or pre-creates is refused
or never written through."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.errors import ConfigError
from credsidecar.private_files import (
    ensure_private_dir,
    read_private_text,
    remove_private,
    write_private_atomic,
)

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common 022, so a file created without care would be readable by others."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def planted(path: Path, env: str | None = "touch /tmp/pwned\n", mode: int = 0o700) -> Path:
    """A run directory (and env file) as another user would leave it for us."""
    path.mkdir(mode=mode)
    path.chmod(mode)
    if env is not None:
        (path / "env").write_text(env)
        (path / "env").chmod(0o600)
    return path


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- directories ------------------------------------------------------------------------------


def test_a_missing_directory_is_created_0700_and_ours(tmp_path: Path) -> None:
    run_dir = ensure_private_dir(tmp_path / "a" / "run")
    assert mode_of(run_dir) == 0o700 and run_dir.stat().st_uid == os.geteuid()


def test_an_existing_private_directory_is_accepted(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    assert ensure_private_dir(run_dir) == run_dir


@as_root
def test_a_directory_owned_by_another_user_is_refused_and_left_untouched(tmp_path: Path) -> None:
    run_dir = planted(tmp_path / "run", mode=0o755)
    os.chown(run_dir, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as refused:
        ensure_private_dir(run_dir, what="run directory", remedy="remove it")
    assert refused.value.message == (
        f"run directory {run_dir} is owned by uid {NOBODY}, not you (uid 0): someone else may "
        "have planted it; remove it"
    )
    assert mode_of(run_dir) == 0o755  # not chmodded, not taken over
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        read_private_text(run_dir / "env")


@as_root
def test_a_directory_another_user_creates_between_look_and_mkdir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = os.mkdir

    def someone_was_faster(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        real_mkdir(path, 0o700)
        os.chown(path, NOBODY, NOBODY)
        raise FileExistsError(path)

    monkeypatch.setattr(os, "mkdir", someone_was_faster)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        ensure_private_dir(tmp_path / "run")


def test_a_directory_that_cannot_be_created_is_a_readable_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create run directory .*file/run \(") as refused:
        ensure_private_dir(tmp_path / "file" / "run", what="run directory")
    assert refused.value.message.endswith("use a directory only you can reach")


def test_a_symlinked_directory_is_refused_even_to_a_private_one(tmp_path: Path) -> None:
    target = private_dir(tmp_path / "target")
    (target / "env").write_text("export A=1\n")
    (target / "env").chmod(0o600)
    link = tmp_path / "run"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link, not a directory"):
        ensure_private_dir(link)
    with pytest.raises(ConfigError, match="is a symbolic link, not a directory"):
        read_private_text(link / "env")


def test_a_file_where_the_directory_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        ensure_private_dir(tmp_path / "run")


def test_a_directory_others_can_read_is_refused_and_chmod_suggested(tmp_path: Path) -> None:
    run_dir = planted(tmp_path / "run", mode=0o755)
    with pytest.raises(
        ConfigError, match=r"has mode 0755, so other users can reach it; `chmod go="
    ):
        ensure_private_dir(run_dir)
    with pytest.raises(ConfigError, match="has mode 0755"):
        read_private_text(run_dir / "env")
    assert mode_of(run_dir) == 0o755


def test_a_directory_others_can_write_is_refused_without_suggesting_chmod(tmp_path: Path) -> None:
    """Something may already have been planted in it: tightening it would not help."""
    run_dir = planted(tmp_path / "run", mode=0o777)
    with pytest.raises(ConfigError, match="has mode 0777") as refused:
        ensure_private_dir(run_dir)
    assert "chmod" not in refused.value.message


# --- reading ----------------------------------------------------------------------------------


def test_a_private_file_in_a_private_directory_is_read(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    write_private_atomic(run_dir / "env", "export A=1\n")
    assert read_private_text(run_dir / "env") == "export A=1\n"


def test_a_missing_file_or_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_private_text(tmp_path / "missing" / "env")
    with pytest.raises(FileNotFoundError):
        read_private_text(private_dir(tmp_path / "run") / "env")


def test_a_symlinked_env_file_is_refused(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("touch /tmp/pwned\n")
    elsewhere.chmod(0o600)
    (run_dir / "env").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link, not a file"):
        read_private_text(run_dir / "env")


def test_an_env_file_others_can_read_is_refused(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    (run_dir / "env").write_text("export A=1\n")
    (run_dir / "env").chmod(0o644)
    with pytest.raises(ConfigError, match="has mode 0644"):
        read_private_text(run_dir / "env")


@as_root
def test_an_env_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    (run_dir / "env").write_text("touch /tmp/pwned\n")
    (run_dir / "env").chmod(0o600)
    os.chown(run_dir / "env", NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        read_private_text(run_dir / "env")


def test_a_hard_link_to_another_file_is_refused(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    other = tmp_path / "other-secret"
    other.write_text("not for the shell\n")
    other.chmod(0o600)
    os.link(other, run_dir / "env")
    with pytest.raises(ConfigError, match="2 hard links"):
        read_private_text(run_dir / "env")


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    run_dir = private_dir(tmp_path / "run")
    os.mkfifo(run_dir / "env", 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_private_text(run_dir / "env")


# --- writing ----------------------------------------------------------------------------------


def test_written_files_are_0600_ours_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "env"
    first = write_private_atomic(path, "one")
    second = write_private_atomic(path, "two")
    assert path.read_text() == "two" and first != second
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert (st.st_dev, st.st_ino) == second
    assert [p.name for p in path.parent.iterdir()] == ["env"]


def test_an_existing_file_open_to_others_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "launch.jwt"
    path.write_text("old")
    path.chmod(0o644)
    with path.open() as reader:  # someone holding the old file sees none of the new text
        write_private_atomic(path, "secret")
        assert reader.read() == "old"
    assert mode_of(path) == 0o600 and path.read_text() == "secret"


def test_pre_created_temporary_names_are_never_written_through(tmp_path: Path) -> None:
    """Another user pre-creates every temporary name the old writer could use (0666) and keeps
    them open: the secret must reach none of them."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)
    target = shared / "job.env"
    traps = []
    for pid in {os.getpid(), *range(max(1, os.getpid() - 50), os.getpid() + 50)}:
        for name in (f".{target.name}.{pid}.tmp", f"{target.name}.{pid}.tmp", f"{target.name}.tmp"):
            trap = shared / name
            if not trap.exists():
                trap.touch()
                trap.chmod(0o666)
                traps.append(trap.open())
    try:
        write_private_atomic(target, "export AWS_CONTAINER_AUTHORIZATION_TOKEN=s3cret\n")
        assert all(trap.read() == "" for trap in traps)
    finally:
        for trap in traps:
            trap.close()
    st = target.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert "s3cret" in target.read_text()


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    link = tmp_path / "job.env"
    link.symlink_to(elsewhere)
    write_private_atomic(link, "secret")
    assert not link.is_symlink() and link.read_text() == "secret"
    assert elsewhere.read_text() == "untouched"


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(UnicodeEncodeError):
        write_private_atomic(tmp_path / "env", "\ud800")  # not encodable
    assert list(tmp_path.iterdir()) == []


# --- removing ---------------------------------------------------------------------------------


def test_remove_deletes_the_file_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "job.env"
    written = write_private_atomic(path, "secret")
    assert remove_private(path, written) and not path.exists()
    assert not remove_private(path, written)  # already gone: nothing to do


def test_remove_leaves_a_file_that_replaced_it(tmp_path: Path) -> None:
    path = tmp_path / "job.env"
    written = write_private_atomic(path, "secret")
    replacement = tmp_path / "new"
    replacement.write_text("someone else's")
    replacement.replace(path)
    assert not remove_private(path, written)
    assert path.read_text() == "someone else's"
