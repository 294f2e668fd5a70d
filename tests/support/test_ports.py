"""A process whose config names its port starts again elsewhere only when the port was taken."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ports import PORT_ATTEMPTS, move_port, start_on_candidate_ports


def test_a_start_that_lost_its_port_is_retried_on_another(tmp_path: Path) -> None:
    log, moved = tmp_path / "issuer.log", []
    log.write_text("OSError: [Errno 98] ... address already in use\n")  # an earlier run's

    def start() -> str:
        if not moved:
            with log.open("a") as f:
                f.write(
                    "OSError: [Errno 98] error while attempting to bind: address already in use\n"
                )
            raise AssertionError("issuer: process exited 1")
        return "up"

    assert start_on_candidate_ports(start, log, moved.append) == "up"
    assert len(moved) == 1 and moved[0] > 0


def test_other_start_failures_are_not_retried(tmp_path: Path) -> None:
    """Only what this attempt logged counts: an earlier run's line does not cause a retry."""
    log, moved = tmp_path / "issuer.log", []
    log.write_text("address already in use\n")

    def start() -> str:
        with log.open("a") as f:
            f.write("ConfigError: policy.toml line 3: unknown key\n")
        raise AssertionError("issuer: process exited 2")

    with pytest.raises(AssertionError, match="exited 2"):
        start_on_candidate_ports(start, log, moved.append)
    assert moved == []


def test_retries_are_bounded(tmp_path: Path) -> None:
    log, moved, calls = tmp_path / "issuer.log", [], []

    def start() -> str:
        calls.append(1)
        with log.open("a") as f:
            f.write("address already in use\n")
        raise AssertionError("issuer: process exited 1")

    with pytest.raises(AssertionError):
        start_on_candidate_ports(start, log, moved.append)
    assert len(calls) == PORT_ATTEMPTS and len(moved) == PORT_ATTEMPTS - 1


def test_moving_the_port_rewrites_the_url_and_the_listen_address(tmp_path: Path) -> None:
    config = tmp_path / "issuer.toml"
    config.write_text('issuer_url = "http://127.0.0.1:4100"\nlisten = "127.0.0.1:4100"\n'
                      'other = "127.0.0.1:41000"\n')  # fmt: skip
    move_port(config, 4100, 5200)
    assert config.read_text() == (
        'issuer_url = "http://127.0.0.1:5200"\nlisten = "127.0.0.1:5200"\n'
        'other = "127.0.0.1:41000"\n'
    )
