"""Sidecar configuration: one table of options (`SIDECAR_OPTIONS`) generates `serve`'s flags,
reads each one's CREDSIDECAR_<FLAG> variable and builds the frozen `SidecarConfig`, validated with
messages that say what to change; `credsidecar env` takes its flags the same way. How a flag,
its variable and its default combine is options.py's docstring."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from credsidecar.clouds.contracts import AWS_DEFAULT_DURATION as DEFAULT_DURATION
from credsidecar.clouds.contracts import AWS_NODE_IMDS_URL
from credsidecar.clouds.contracts import AZURE_AUTHORITY as AUTHORITY
from credsidecar.clouds.contracts import AZURE_NODE_IMDS_URL as NODE_IMDS_URL
from credsidecar.clouds.contracts import GCP_IAM_URL as IAM_URL
from credsidecar.clouds.contracts import GCP_NODE_METADATA_URL as NODE_METADATA_URL
from credsidecar.clouds.contracts import GCP_STS_URL as STS_URL
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
    add_options,
    build,
    group,
)

__all__ = [
    "ENV_COMMAND_OPTIONS",
    "SIDECAR_OPTIONS",
    "EnvCommandConfig",
    "SidecarConfig",
    "add_env_command_arguments",
    "add_sidecar_arguments",
    "default_run_dir",
    "env_command_from_args",
    "from_args",
]

# STS accepts 900..43200 s; shorter lifetimes exist for the sandbox's renewal tests.
MIN_DURATION, MAX_DURATION = 5, 43200
MAX_UID = 2**32 - 1  # uid_t is 32 bits and (uid_t)-1 means "no user"

# The way out when the run directory is refused (private_files.py says why it would be).
RUN_DIR_REMEDY = "remove it or pass --run-dir to a private directory (or set XDG_RUNTIME_DIR)"


def default_run_dir() -> Path:
    """$XDG_RUNTIME_DIR/credsidecar, else /tmp/credsidecar-EUID: a predictable name another
    user may create first, which is why `serve` and `env` accept it only when it is private."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "credsidecar"
    # $TMPDIR or /tmp, named without probing it (tempfile.gettempdir() tries to write there and
    # raises where no temporary directory is writable: a read-only container with only a
    # run-directory volume must still get `--help` and `healthcheck`).
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"credsidecar-{os.geteuid()}"  # noqa: S108


@dataclass(frozen=True)
class SidecarConfig:
    token_file: Path | None = None
    token_env: str | None = None
    token_stdin: bool = False
    direct_token_file: Path | None = None
    issuer_url: str | None = None
    aws_role_arn: str | None = None
    aws_identity: str | None = None
    aws_audience: str | None = None
    aws_duration: int = DEFAULT_DURATION
    aws_region: str = "us-east-1"
    aws_sts_endpoint: str | None = None
    aws_endpoint_url: str | None = None
    aws_node_imds_url: str = AWS_NODE_IMDS_URL
    host: str = "127.0.0.1"
    port: int = 0
    link_local: bool = False
    # Also answer on the clouds' metadata addresses, port 80 (listen.bind_well_known; deploy/netns).
    well_known: bool = False
    # The AWS container document at this path with no Authorization (169.254.170.2 + it, with
    # well_known, for clients given only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI).
    aws_relative_uri: str | None = None
    # Unix users answered besides the sidecar's own and root (a job under another account).
    allow_uids: frozenset[int] = frozenset()
    # Answer every local peer: only where the network namespace holds nothing but the job.
    any_local_peer: bool = False
    # Every endpoint needs the per-job secret (loopback shared with other jobs of our uid).
    secret_only: bool = False
    run_dir: Path = field(default_factory=default_run_dir)
    env_file: Path | None = None
    exit_with: int | None = None
    audit_log: str | None = None
    ready_timeout: float = 120.0
    keep_aws_config: bool = False
    # Clouds to serve; None serves every cloud the launch token carries an identity for.
    clouds: frozenset[str] | None = None
    gcp_identity: str | None = None
    gcp_project_id: str | None = None
    gcp_sts_url: str = STS_URL
    gcp_iam_url: str = IAM_URL
    gcp_lifetime: int = 3600
    gcp_node_metadata_url: str = NODE_METADATA_URL
    azure_identity: str | None = None
    azure_authority: str = AUTHORITY
    azure_node_imds_url: str = NODE_IMDS_URL
    # Extra variables for the job, e.g. the sandbox's endpoints and CA.
    job_env: Mapping[str, str] = field(default_factory=dict)
    # CA certificates trusted, besides the system's, for HTTPS to the issuer, GCP and Azure.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        sources = [self.token_file, self.token_env, self.token_stdin or None,
                   self.direct_token_file]  # fmt: skip
        if sum(s is not None for s in sources) != 1:
            raise ConfigError(
                "give exactly one token source: --token-file, --token-env, --token-stdin or "
                "--direct-token-file"
            )
        if self.direct_token_file is not None and not self.aws_role_arn:
            raise ConfigError("direct mode has no launch token to name a role: add --aws-role-arn")
        if not MIN_DURATION <= self.aws_duration <= MAX_DURATION:
            raise ConfigError(
                f"--aws-duration must be {MIN_DURATION}..{MAX_DURATION} s (AWS itself needs 900+)"
            )
        unknown = (self.clouds or frozenset()) - {"aws", "gcp", "azure"}
        if unknown:
            raise ConfigError(f"--clouds: unknown cloud(s) {sorted(unknown)}; use aws, gcp, azure")
        if not MIN_DURATION <= self.gcp_lifetime <= MAX_DURATION:
            raise ConfigError(f"--gcp-lifetime must be {MIN_DURATION}..{MAX_DURATION} s")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be 0..65535 (0 picks a free port)")
        if self.host not in ("127.0.0.1", "::1") and not self.link_local:
            raise ConfigError(
                f"--host {self.host} is not loopback; the sidecar serves credentials on "
                "127.0.0.1 only (use --link-local for a 169.254.x address)"
            )
        if self.well_known and self.secret_only:
            raise ConfigError(
                "--well-known serves the clouds' metadata contracts, which carry no per-job "
                "secret; it cannot be combined with --secret-only"
            )
        if self.aws_relative_uri is not None and not self.aws_relative_uri.startswith("/"):
            raise ConfigError(
                f"--aws-relative-uri {self.aws_relative_uri[:60]!r} is not a path: start it "
                "with /, e.g. /v2/credentials/<random>"
            )
        if self.aws_relative_uri is not None and self.secret_only:
            raise ConfigError("--aws-relative-uri serves credentials with no per-job secret; it "
                              "cannot be combined with --secret-only")  # fmt: skip
        bad_uids = [u for u in self.allow_uids if not isinstance(u, int) or not 0 <= u < MAX_UID]
        if bad_uids:
            raise ConfigError(f"--allow-uid {bad_uids[0]!r} is not a uid: give a number >= 0")

    @property
    def direct(self) -> bool:
        return self.direct_token_file is not None


@dataclass(frozen=True)
class EnvCommandConfig:
    """`credsidecar env`: which sidecar's job environment to print, and how long to wait."""

    run_dir: Path = field(default_factory=default_run_dir)
    wait: float = 0.0


def _uid(text: str) -> int:
    try:
        uid = int(text)
    except ValueError:
        uid = -1
    if not 0 <= uid < MAX_UID:
        raise ValueError("is not a uid: give a number >= 0 (`id -u USER` prints it)")
    return uid


UIDS = Kind(_uid, combine=frozenset, repeat=True)

# One line per option, wrapped by hand: the table reads as a list of flags.
# fmt: off
SIDECAR_OPTIONS: tuple[Option, ...] = (
    *group(
        "launch token (exactly one)",
        Option("--token-file", PATH, "file holding the launch token; re-read when it changes"),
        Option("--token-env", TEXT, "environment variable holding the launch token (removed "
               "after reading)", metavar="VARIABLE"),
        Option("--token-stdin", SWITCH, "read the launch token from stdin"),
        Option("--direct-token-file", PATH, "direct mode: present this token file (e.g. a "
               "projected Kubernetes token) to the clouds as is, without the issuer"),
        Option("--issuer-url", TEXT, "issuer to exchange at (default: the launch token's iss)"),
        Option("--clouds", WORDS, "comma-separated clouds to serve, e.g. aws,gcp (default: every "
               "cloud the launch token carries an identity for)", metavar="LIST"),
    ),
    *group(
        "AWS",
        Option("--aws-role-arn", TEXT, "role to assume (default: the identity in the launch "
               "token)"),
        Option("--aws-identity", TEXT, "name of a granted AWS identity other than the launch's "
               "default"),
        Option("--aws-audience", TEXT, "audience for direct mode (default sts.amazonaws.com)"),
        Option("--aws-duration", INT, "credential lifetime in seconds (default {default})"),
        Option("--aws-region", TEXT),
        Option("--aws-sts-endpoint", TEXT, "STS endpoint URL (default: the regional endpoint)"),
        Option("--aws-node-imds-url", TEXT, "the node's IMDS, asked (IMDSv2) for the node's "
               "instance profile when a launch is granted it (default {default})"),
        Option("--aws-endpoint-url", TEXT, "export AWS_ENDPOINT_URL to the job (the sandbox "
               "uses this)"),
        Option("--keep-aws-config", SWITCH, "do not point AWS_CONFIG_FILE/"
               "AWS_SHARED_CREDENTIALS_FILE at /dev/null"),
    ),
    *group(
        "GCP",
        Option("--gcp-identity", TEXT, "name of a granted GCP identity other than the launch's "
               "default"),
        Option("--gcp-project-id", TEXT),
        Option("--gcp-sts-url", TEXT),
        Option("--gcp-iam-url", TEXT, "IAM Credentials API base URL"),
        Option("--gcp-lifetime", INT, "service account access token lifetime in seconds "
               "(default {default})"),
        Option("--gcp-node-metadata-url", TEXT, "the node's metadata server, asked for the "
               "node's own service account when a launch is granted it (default {default})"),
    ),
    *group(
        "Azure",
        Option("--azure-identity", TEXT, "name of the granted Azure identity served without a "
               "selector (default: the launch's default)"),
        Option("--azure-authority", TEXT, "Entra authority host (default {default})"),
        Option("--azure-node-imds-url", TEXT, "the node's IMDS, asked for the node's own "
               "managed identities a launch is granted (default {default})"),
    ),
    *group(
        "serving",
        Option("--job-env", ASSIGNMENTS, "extra variable to export to the job (the sandbox's "
               "endpoints and CA)", metavar="NAME=VALUE"),
        Option("--ca-file", PATH, "PEM CA certificates to trust, besides the system's, for HTTPS "
               "to the issuer, GCP and Azure (a private issuer's CA, the sandbox's CA); AWS "
               "reads AWS_CA_BUNDLE"),
        Option("--host", TEXT),
        Option("--port", INT, "port to listen on (default: a free one, written to the env "
               "file)"),
        Option("--link-local", SWITCH, "also accept peers and Host names on 169.254.x (opt-in)"),
        Option("--well-known", SWITCH, "also answer on the clouds' metadata addresses, port 80: "
               "169.254.169.254 (AWS, GCP, Azure; metadata.google.internal), 169.254.170.2 and "
               "fd00:ec2::254 where present; they must already be on an interface (e.g. the "
               "namespace's loopback: deploy/netns), and port 80 needs CAP_NET_BIND_SERVICE or "
               "the sysctl net.ipv4.ip_unprivileged_port_start=80"),
        Option("--aws-relative-uri", TEXT, "also serve AWS credentials at this path with no "
               "Authorization: with --well-known, http://169.254.170.2 + PATH is the ECS "
               "endpoint of clients given only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=PATH; the "
               "path is the only secret: make it unguessable", metavar="PATH"),
        Option("--allow-uid", UIDS, "also answer processes of this Unix user (repeatable; "
               "its variable takes a comma-separated list); by default only the sidecar's own "
               "user and root are answered", metavar="UID", field="allow_uids"),
        Option("--any-local-peer", SWITCH, "answer every local peer, whatever its Unix user: only "
               "where the network namespace holds nothing but the job (a Kubernetes pod, a "
               "compose service sharing the sidecar's network)"),
        Option("--secret-only", SWITCH, "serve only endpoints that need the per-job secret "
               "(AWS container endpoint, Azure IDENTITY_HEADER, GCP external-account file): "
               "for hosts whose loopback other jobs share"),
        Option("--run-dir", PATH, "private directory for secrets and the env file (default "
               "{default})"),
        Option("--env-file", PATH, "write the job's export/unset lines here, atomically, once "
               "ready"),
        Option("--exit-with", INT, "exit when this process (the job) ends", metavar="PID"),
        Option("--audit-log", TEXT, "audit JSON lines to this file (default stderr)"),
        Option("--ready-timeout", SECONDS, "give up if no credentials are obtained within this "
               "many seconds"),
    ),
)

ENV_COMMAND_OPTIONS: tuple[Option, ...] = (
    Option("--run-dir", PATH, "the sidecar's --run-dir (default {default})"),
    Option("--wait", SECONDS, "wait up to this many seconds for the sidecar to become ready"),
)
# fmt: on


def add_sidecar_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """`serve`'s flags, each also read from its CREDSIDECAR_* variable in `env`."""
    add_options(parser, SIDECAR_OPTIONS, SidecarConfig, env)


def from_args(args: argparse.Namespace) -> SidecarConfig:
    """The config from parsed `serve` flags and the variables `add_sidecar_arguments` kept."""
    return build(SidecarConfig, SIDECAR_OPTIONS, args)


def add_env_command_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """`credsidecar env`'s flags, each also read from its CREDSIDECAR_* variable in `env`."""
    add_options(parser, ENV_COMMAND_OPTIONS, EnvCommandConfig, env)


def env_command_from_args(args: argparse.Namespace) -> EnvCommandConfig:
    return build(EnvCommandConfig, ENV_COMMAND_OPTIONS, args)
