"""Issuer configuration: defaults, validation with line numbers, the issuer URL warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.config import (
    DEFAULT_PLATFORM_KEY_RATE,
    DEFAULT_RUN_RATE,
    issuer_url_warning,
    load_config,
    new_api_key,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "issuer.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'issuer_url = "https://id.example.org"\n'))
    assert (config.host, config.port) == ("127.0.0.1", 8400)
    assert config.state_dir == tmp_path / "state"
    assert config.policy_path == tmp_path / "policy.toml"
    assert (config.launch_lifetime, config.exchange_lifetime) == (86400, 600)
    assert config.key_algorithm == "RS256"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('issuer_url = "ftp://x"\n', "issuer_url must be an http(s) URL"),
        ('issuer_url = "https://x/"\n', "trailing slash"),
        ('issuer_url = "https://x"\nlisten = "nope"\n', "listen must be HOST:PORT"),
        ('issuer_url = "https://x"\nkey_algorithm = "HS256"\n', "key_algorithm"),
        ('issuer_url = "https://x"\nlaunch_token_lifetime = 999999999\n', "launch_token_lifetime"),
        ('issuer_url = "https://x"\ncolour = 1\n', "'colour' is not a known"),
        ('issuer_url = "https://x"\n[[platform_keys]]\nname = "p"\nsha256 = "abc"\n', "sha256"),
        ('issuer_url = "https://x"\n[tls]\ncert = "c.pem"\n', "both cert and key"),
    ],
)
def test_invalid_settings_are_reported_with_the_line(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert fragment in info.value.message
    assert f"{tmp_path / 'issuer.toml'}:" in info.value.message
    assert ":?:" not in info.value.message


def test_api_key_digest_matches_only_that_key(tmp_path: Path) -> None:
    key, digest = new_api_key()
    text = f'issuer_url = "https://x"\n[[platform_keys]]\nname = "p"\nsha256 = "{digest}"\n'
    (platform,) = load_config(write(tmp_path, text)).platform_keys
    assert platform.matches(key)
    assert not platform.matches(key + "x")
    assert key not in text


@pytest.mark.parametrize(
    ("url", "warns"),
    [("https://id.example.org", False), ("https://id.example.org:8443", True),
     ("http://id.example.org", True)],
)  # fmt: skip
def test_issuer_url_warning(url: str, warns: bool) -> None:
    assert (issuer_url_warning(url) is not None) is warns


def test_store_workers_and_rate_limits(tmp_path: Path) -> None:
    default = load_config(write(tmp_path, 'issuer_url = "https://x"\n'))
    assert default.store.url is None and not default.store.postgres
    assert default.workers == 1
    assert default.platform_key_rate == DEFAULT_PLATFORM_KEY_RATE
    assert default.run_rate == DEFAULT_RUN_RATE
    config = load_config(
        write(
            tmp_path,
            'issuer_url = "https://x"\nworkers = "auto"\n'
            '[store]\nurl = "postgresql://cs@db.example:5432/credsidecar"\n'
            'password_env = "CS_DB_PASSWORD"\npool_size = 4\ntimeout = 2\n'
            "[rate_limits]\nper_platform_key = { rate = 200, burst = 400 }\n"
            "per_run = { rate = 2.5 }\n",
        )
    )
    assert config.store.postgres and config.store.pool_size == 4 and config.store.timeout == 2.0
    assert config.store.password_env == "CS_DB_PASSWORD"
    assert config.workers == 0  # one per core
    assert config.platform_key_rate is not None and config.platform_key_rate.burst == 400
    assert config.run_rate is not None and (config.run_rate.rate, config.run_rate.burst) == (2.5, 2)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[store]\nurl = "mysql://db/x"\n', "postgresql:// URL"),
        ('[store]\nurl = "postgresql://u:secret@db/x"\n', "must not hold a password"),
        ("[store]\npool_size = 0\n", "pool_size"),
        ("[store]\nhost = 1\n", "'host' is not a known [store] setting"),
        ("workers = 0\n", "workers must be an integer"),
        ("[rate_limits]\nper_run = 5\n", "per_run must be"),
        ("[rate_limits]\nper_run = { rate = -1 }\n", "positive number"),
        ("[rate_limits]\nper_user = { rate = 1 }\n", "'per_user' is not a known"),
    ],
)
def test_invalid_store_workers_and_rate_limits(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'issuer_url = "https://x"\n' + text))
    assert fragment in info.value.message
    assert "secret" not in info.value.message
