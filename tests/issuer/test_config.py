"""Issuer configuration: defaults, validation with line numbers, the issuer URL warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.config import issuer_url_warning, load_config, new_api_key


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
