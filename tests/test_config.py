"""Sidecar options: one table drives the flags, their CREDSIDECAR_* variables and the config.

The parametrized tests run over `SIDECAR_OPTIONS` and `ENV_COMMAND_OPTIONS`, so a new option is
checked against its variable without anyone writing a test for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from credsidecar.config import (
    ENV_COMMAND_OPTIONS,
    SIDECAR_OPTIONS,
    UIDS,
    EnvCommandConfig,
    SidecarConfig,
    add_env_command_arguments,
    add_sidecar_arguments,
    default_run_dir,
    env_command_from_args,
    from_args,
)
from credsidecar.errors import ConfigError
from credsidecar.options import (
    ASSIGNMENTS,
    INT,
    PATH,
    SECONDS,
    SWITCH,
    TEXT,
    WORDS,
    Kind,
    Option,
)

ROLE = "arn:aws:iam::123456789012:role/alice-data"
TOKEN_SOURCES = {"--token-file", "--token-env", "--token-stdin", "--direct-token-file"}

# A value of each kind that differs from any default; a new kind needs one here.
EXAMPLES: dict[Kind, str] = {
    TEXT: "example-value",
    PATH: "some/dir/file",
    INT: "42",
    SECONDS: "7.5",
    WORDS: "aws,gcp",
    UIDS: "1234",
    ASSIGNMENTS: "EXAMPLE=a,b",
}
# Options whose generic example would fail the config's own validation.
SPECIAL_EXAMPLES = {"--host": "::1", "--token-env": "JOB_TOKEN",
                    "--aws-relative-uri": "/v2/credentials/example"}  # fmt: skip


def sidecar(argv: Sequence[str], env: dict[str, str]) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser, env)
    return from_args(parser.parse_args(argv))


def env_command(argv: Sequence[str], env: dict[str, str]) -> EnvCommandConfig:
    parser = argparse.ArgumentParser()
    add_env_command_arguments(parser, env)
    return env_command_from_args(parser.parse_args(argv))


def base_argv(option: Option) -> list[str]:
    """A token source (unless the option is one), so that the config is valid."""
    if option.flag == "--direct-token-file":
        return ["--aws-role-arn", ROLE]
    return [] if option.flag in TOKEN_SOURCES else ["--token-file", "t"]


def flag_and_variable(option: Option) -> tuple[list[str], dict[str, str]]:
    if option.kind.switch:
        return [option.flag], {option.variable: "yes"}
    example = SPECIAL_EXAMPLES.get(option.flag) or EXAMPLES[option.kind]
    return [option.flag, example], {option.variable: example}


def default_of(config: type[Any], name: str) -> object:
    (found,) = [f for f in dataclasses.fields(config) if f.name == name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return found.default


def ids(options: Sequence[Option]) -> list[str]:
    return [option.flag for option in options]


@pytest.mark.parametrize("option", SIDECAR_OPTIONS, ids=ids(SIDECAR_OPTIONS))
def test_every_serve_flag_and_its_variable_give_the_same_config(option: Option) -> None:
    argv, env = flag_and_variable(option)
    base = base_argv(option)
    by_flag = getattr(sidecar([*base, *argv], {}), option.name)
    by_variable = getattr(sidecar(base, env), option.name)
    assert by_flag == by_variable
    assert by_variable != default_of(SidecarConfig, option.name), f"{option.variable} unread"


@pytest.mark.parametrize("option", ENV_COMMAND_OPTIONS, ids=ids(ENV_COMMAND_OPTIONS))
def test_every_env_command_flag_and_its_variable_give_the_same_config(option: Option) -> None:
    argv, env = flag_and_variable(option)
    by_flag = getattr(env_command(argv, {}), option.name)
    assert by_flag == getattr(env_command([], env), option.name)
    assert by_flag != default_of(EnvCommandConfig, option.name)


def test_every_config_field_is_an_option_and_every_variable_is_distinct() -> None:
    for options, config in ((SIDECAR_OPTIONS, SidecarConfig), (ENV_COMMAND_OPTIONS,
                                                               EnvCommandConfig)):  # fmt: skip
        assert [o.name for o in options] != []
        assert {o.name for o in options} == {f.name for f in dataclasses.fields(config)}
        assert len({o.variable for o in options}) == len(options)


def test_a_variable_is_named_after_its_flag() -> None:
    by_flag = {o.flag: o for o in SIDECAR_OPTIONS}
    assert by_flag["--aws-role-arn"].variable == "CREDSIDECAR_AWS_ROLE_ARN"
    assert by_flag["--allow-uid"].variable == "CREDSIDECAR_ALLOW_UID"
    assert by_flag["--allow-uid"].name == "allow_uids"


BAD_VALUES = {SWITCH: "maybe", INT: "12x", SECONDS: "soon", UIDS: "1000,nobody",
              ASSIGNMENTS: "NOVALUE"}  # fmt: skip
REASONS = {SWITCH: "is not a yes/no value: use 1, true, yes or 0, false, no",
           INT: "is not a whole number", SECONDS: "is not a number of seconds",
           UIDS: "is not a uid", ASSIGNMENTS: "is not NAME=VALUE"}  # fmt: skip
CHECKED = [o for o in SIDECAR_OPTIONS if o.kind in BAD_VALUES]


@pytest.mark.parametrize("option", CHECKED, ids=ids(CHECKED))
def test_a_bad_variable_is_a_config_error_naming_it(option: Option) -> None:
    with pytest.raises(ConfigError) as caught:
        sidecar(base_argv(option), {option.variable: BAD_VALUES[option.kind]})
    assert caught.value.message.startswith(f"{option.variable} '")
    assert REASONS[option.kind] in caught.value.message


@pytest.mark.parametrize("option", [o for o in CHECKED if not o.kind.switch],
                         ids=ids([o for o in CHECKED if not o.kind.switch]))  # fmt: skip
def test_a_bad_flag_value_is_a_config_error_naming_the_flag(option: Option) -> None:
    bad = BAD_VALUES[option.kind].split(",")[-1]
    with pytest.raises(ConfigError, match=f"^{option.flag} '{bad}' {REASONS[option.kind]}"):
        sidecar([*base_argv(option), option.flag, bad], {})


def test_a_bad_value_is_shown_short() -> None:
    with pytest.raises(ConfigError) as caught:
        sidecar(["--token-file", "t"], {"CREDSIDECAR_PORT": "9" * 5000 + "x"})
    assert len(caught.value.message) < 120


def test_switch_variables_read_yes_and_no_in_any_case() -> None:
    for text in ("1", "true", "YES", " True "):
        assert sidecar(["--token-file", "t"], {"CREDSIDECAR_LINK_LOCAL": text}).link_local
    for text in ("0", "false", "No", ""):
        assert not sidecar(["--token-file", "t"], {"CREDSIDECAR_LINK_LOCAL": text}).link_local


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    base = ["--token-file", "t"]
    assert sidecar(base, {}).aws_duration == 3600
    assert sidecar(base, {"CREDSIDECAR_AWS_DURATION": "1800"}).aws_duration == 1800
    both = sidecar([*base, "--aws-duration", "900"], {"CREDSIDECAR_AWS_DURATION": "1800"})
    assert both.aws_duration == 900
    # A switch given wins over its variable saying no.
    assert sidecar([*base, "--link-local"], {"CREDSIDECAR_LINK_LOCAL": "no"}).link_local
    # The flag replaces its variable: one token source, not two.
    config = sidecar(["--token-file", "t"], {"CREDSIDECAR_TOKEN_FILE": "elsewhere"})
    assert config.token_file == Path("t").resolve()


def test_a_repeated_flag_replaces_its_variables_list() -> None:
    base = ["--token-file", "t"]
    env = {"CREDSIDECAR_ALLOW_UID": "1, 2", "CREDSIDECAR_JOB_ENV": "A=1,B=2"}
    assert sidecar(base, env).allow_uids == {1, 2}
    assert sidecar([*base, "--allow-uid", "5", "--allow-uid", "6"], env).allow_uids == {5, 6}
    assert sidecar(base, env).job_env == {"A": "1", "B": "2"}
    assert sidecar([*base, "--job-env", "C=3"], env).job_env == {"C": "3"}


def test_job_env_items_keep_commas_that_do_not_start_a_new_name() -> None:
    env = {"CREDSIDECAR_JOB_ENV": "NO_PROXY=a,b,.c, HTTPS_PROXY=http://p:1,_X="}
    assert sidecar(["--token-file", "t"], env).job_env == {
        "NO_PROXY": "a,b,.c", "HTTPS_PROXY": "http://p:1", "_X": ""
    }  # fmt: skip
    # A flag is one item however many commas it holds.
    flag = sidecar(["--token-file", "t", "--job-env=A=1,B=2"], {})
    assert flag.job_env == {"A": "1,B=2"}


def test_an_empty_variable_means_the_default() -> None:
    env = {"CREDSIDECAR_PORT": "", "CREDSIDECAR_TOKEN_FILE": " ", "CREDSIDECAR_CLOUDS": ""}
    config = sidecar(["--token-env", "JOB_TOKEN"], env)
    assert (config.port, config.token_file, config.clouds) == (0, None, None)


def test_clouds_take_a_comma_separated_list_as_flag_or_variable() -> None:
    base = ["--token-file", "t"]
    assert sidecar([*base, "--clouds", "aws, gcp"], {}).clouds == {"aws", "gcp"}
    assert sidecar(base, {"CREDSIDECAR_CLOUDS": "azure"}).clouds == {"azure"}
    with pytest.raises(ConfigError, match="unknown cloud"):
        sidecar(base, {"CREDSIDECAR_CLOUDS": "aws,ibm"})


def test_a_bad_variable_fails_only_the_command_that_builds_the_config() -> None:
    """`--help`, `credsidecar env` and the rest parse fine beside a broken serve variable."""
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser, {"CREDSIDECAR_PORT": "eighty"})
    args = parser.parse_args(["--token-file", "t"])
    with pytest.raises(ConfigError, match="CREDSIDECAR_PORT 'eighty' is not a whole number"):
        from_args(args)


def test_the_parser_keeps_only_the_options_variables() -> None:
    """Not a copy of the environment: it may hold the launch token --token-env names."""
    env = {"JOB_TOKEN": "eyJ.secret.token", "CREDSIDECAR_TOKEN_ENV": "JOB_TOKEN"}
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser, env)
    args = parser.parse_args([])
    assert "eyJ.secret.token" not in repr(vars(args))
    assert from_args(args).token_env == "JOB_TOKEN"


def test_help_shows_the_dataclass_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser, {})
    text = " ".join(parser.format_help().split())
    assert "credential lifetime in seconds (default 3600)" in text
    assert f"(default {SidecarConfig(token_file=Path('t')).run_dir})" in text
    assert "{default}" not in text


def test_the_cli_env_command_reads_its_run_dir_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credsidecar.cli import _parser

    monkeypatch.setenv("CREDSIDECAR_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CREDSIDECAR_PORT", "not-a-port")  # serve's problem, not env's
    args = _parser().parse_args(["env"])
    assert env_command_from_args(args).run_dir == tmp_path


def test_importing_the_config_loads_no_server_or_sdk_module() -> None:
    code = (
        "import sys, credsidecar.config, credsidecar.options\n"
        "heavy = ('aiohttp', 'boto3', 'botocore', 'google', 'azure', 'asyncssh', 'joserfc')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_the_default_run_directory_is_named_without_probing_the_temporary_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A read-only container with no writable /tmp still builds the parser (`--help`,
    `healthcheck`): the default is only a name, checked when `serve` or `env` use it."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert default_run_dir() == tmp_path / "missing" / f"credsidecar-{os.geteuid()}"


def test_well_known_and_a_relative_uri_refuse_secret_only() -> None:
    base = ["--token-file", "t", "--secret-only"]
    with pytest.raises(ConfigError, match=r"--well-known .* cannot be combined with --secret-only"):
        sidecar([*base, "--well-known"], {})
    with pytest.raises(ConfigError, match=r"--aws-relative-uri .* --secret-only"):
        sidecar([*base, "--aws-relative-uri", "/v2/credentials/x"], {})


def test_a_relative_uri_must_be_a_path() -> None:
    with pytest.raises(ConfigError, match="is not a path: start it with /"):
        sidecar(["--token-file", "t", "--aws-relative-uri", "v2/credentials/x"], {})
