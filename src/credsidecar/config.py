"""Sidecar configuration: command-line flags, each defaulting to a CREDSIDECAR_* variable,
parsed once into a frozen dataclass and validated with messages that say what to change."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from credsidecar.clouds.contracts import AWS_DEFAULT_DURATION as DEFAULT_DURATION
from credsidecar.clouds.contracts import AZURE_AUTHORITY as AUTHORITY
from credsidecar.clouds.contracts import GCP_IAM_URL as IAM_URL
from credsidecar.clouds.contracts import GCP_STS_URL as STS_URL
from credsidecar.errors import ConfigError

__all__ = ["SidecarConfig", "add_sidecar_arguments", "default_run_dir"]

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
    return Path(tempfile.gettempdir()) / f"credsidecar-{os.geteuid()}"


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
    host: str = "127.0.0.1"
    port: int = 0
    link_local: bool = False
    # Unix users answered besides the sidecar's own and root (a job under another account).
    allow_uids: frozenset[int] = frozenset()
    # Answer every local peer: only where the network namespace holds nothing but the job.
    any_local_peer: bool = False
    run_dir: Path = Path()
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
    azure_identity: str | None = None
    azure_authority: str = AUTHORITY
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
        bad_uids = [u for u in self.allow_uids if not isinstance(u, int) or not 0 <= u < MAX_UID]
        if bad_uids:
            raise ConfigError(f"--allow-uid {bad_uids[0]!r} is not a uid: give a number >= 0")

    @property
    def direct(self) -> bool:
        return self.direct_token_file is not None


def _env(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    return env.get(f"CREDSIDECAR_{name}", default)


def add_sidecar_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    src = parser.add_argument_group("launch token (exactly one)")
    src.add_argument(
        "--token-file",
        default=_env(env, "TOKEN_FILE"),
        help="file holding the launch token; re-read when it changes",
    )
    src.add_argument(
        "--token-env",
        default=_env(env, "TOKEN_ENV"),
        metavar="VARIABLE",
        help="environment variable holding the launch token (removed after reading)",
    )
    src.add_argument("--token-stdin", action="store_true", help="read the launch token from stdin")
    src.add_argument(
        "--direct-token-file",
        default=_env(env, "DIRECT_TOKEN_FILE"),
        help="direct mode: present this token file (e.g. a projected Kubernetes "
        "token) to the clouds as is, without the issuer",
    )
    src.add_argument(
        "--issuer-url",
        default=_env(env, "ISSUER_URL"),
        help="issuer to exchange at (default: the launch token's iss)",
    )
    src.add_argument(
        "--clouds",
        default=_env(env, "CLOUDS"),
        metavar="LIST",
        help="comma-separated clouds to serve, e.g. aws,gcp (default: every cloud "
        "the launch token carries an identity for)",
    )
    aws = parser.add_argument_group("AWS")
    aws.add_argument(
        "--aws-role-arn",
        default=_env(env, "AWS_ROLE_ARN"),
        help="role to assume (default: the identity in the launch token)",
    )
    aws.add_argument(
        "--aws-identity",
        default=_env(env, "AWS_IDENTITY"),
        help="name of a granted AWS identity other than the launch's default",
    )
    aws.add_argument(
        "--aws-audience",
        default=_env(env, "AWS_AUDIENCE"),
        help="audience for direct mode (default sts.amazonaws.com)",
    )
    aws.add_argument(
        "--aws-duration",
        type=int,
        default=int(_env(env, "AWS_DURATION", str(DEFAULT_DURATION)) or 0),
        help=f"credential lifetime in seconds (default {DEFAULT_DURATION})",
    )
    aws.add_argument("--aws-region", default=_env(env, "AWS_REGION", "us-east-1"))
    aws.add_argument(
        "--aws-sts-endpoint",
        default=_env(env, "AWS_STS_ENDPOINT"),
        help="STS endpoint URL (default: the regional endpoint)",
    )
    aws.add_argument(
        "--aws-endpoint-url",
        default=_env(env, "AWS_ENDPOINT_URL"),
        help="export AWS_ENDPOINT_URL to the job (the sandbox uses this)",
    )
    aws.add_argument(
        "--keep-aws-config",
        action="store_true",
        help="do not point AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE at /dev/null",
    )
    gcp = parser.add_argument_group("GCP")
    gcp.add_argument(
        "--gcp-identity",
        default=_env(env, "GCP_IDENTITY"),
        help="name of a granted GCP identity other than the launch's default",
    )
    gcp.add_argument("--gcp-project-id", default=_env(env, "GCP_PROJECT_ID"))
    gcp.add_argument("--gcp-sts-url", default=_env(env, "GCP_STS_URL", STS_URL))
    gcp.add_argument(
        "--gcp-iam-url",
        default=_env(env, "GCP_IAM_URL", IAM_URL),
        help="IAM Credentials API base URL",
    )
    gcp.add_argument(
        "--gcp-lifetime",
        type=int,
        default=int(_env(env, "GCP_LIFETIME", "3600") or 3600),
        help="service account access token lifetime in seconds (default 3600)",
    )
    az = parser.add_argument_group("Azure")
    az.add_argument("--azure-identity", default=_env(env, "AZURE_IDENTITY"),
                    help="name of the granted Azure identity served without a selector "
                         "(default: the launch's default)")  # fmt: skip
    az.add_argument("--azure-authority", default=_env(env, "AZURE_AUTHORITY", AUTHORITY),
                    help=f"Entra authority host (default {AUTHORITY})")  # fmt: skip
    srv = parser.add_argument_group("serving")
    srv.add_argument(
        "--job-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra variable to export to the job (the sandbox's endpoints and CA)",
    )
    srv.add_argument(
        "--ca-file",
        default=_env(env, "CA_FILE"),
        help="PEM CA certificates to trust, besides the system's, for HTTPS to the issuer, "
        "GCP and Azure (a private issuer's CA, the sandbox's CA); AWS reads AWS_CA_BUNDLE",
    )
    srv.add_argument("--host", default=_env(env, "HOST", "127.0.0.1"))
    srv.add_argument(
        "--port",
        type=int,
        default=int(_env(env, "PORT", "0") or 0),
        help="port to listen on (default: a free one, written to the env file)",
    )
    srv.add_argument(
        "--link-local",
        action="store_true",
        help="also accept peers and Host names on 169.254.x (opt-in)",
    )
    srv.add_argument(
        "--allow-uid",
        action="append",
        default=[u for u in (_env(env, "ALLOW_UID") or "").split(",") if u.strip()],
        metavar="UID",
        help="also answer processes of this Unix user (repeatable; env CREDSIDECAR_ALLOW_UID, "
        "comma-separated); by default only the sidecar's own user and root are answered",
    )
    srv.add_argument(
        "--any-local-peer",
        action="store_true",
        default=_env(env, "ANY_LOCAL_PEER", "") in ("1", "true", "yes"),
        help="answer every local peer, whatever its Unix user: only where the network "
        "namespace holds nothing but the job (a Kubernetes pod, a compose service sharing "
        "the sidecar's network)",
    )
    srv.add_argument(
        "--run-dir",
        default=_env(env, "RUN_DIR"),
        help=f"private directory for secrets and the env file (default {default_run_dir()})",
    )
    srv.add_argument(
        "--env-file",
        default=_env(env, "ENV_FILE"),
        help="write the job's export/unset lines here, atomically, once ready",
    )
    srv.add_argument(
        "--exit-with", type=int, metavar="PID", help="exit when this process (the job) ends"
    )
    srv.add_argument(
        "--audit-log",
        default=_env(env, "AUDIT_LOG"),
        help="audit JSON lines to this file (default stderr)",
    )
    srv.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="give up if no credentials are obtained within this many seconds",
    )


def _uid(text: str) -> int:
    try:
        uid = int(text.strip())
    except ValueError:
        uid = -1
    if not 0 <= uid < MAX_UID:
        raise ConfigError(
            f"--allow-uid {text.strip()[:40]!r} (or CREDSIDECAR_ALLOW_UID) is not a uid: give a "
            "number >= 0 (`id -u USER` prints it)"
        )
    return uid


def from_args(args: argparse.Namespace) -> SidecarConfig:
    def path(value: str | None) -> Path | None:
        return Path(value).resolve() if value else None

    return SidecarConfig(
        token_file=path(args.token_file),
        token_env=args.token_env,
        token_stdin=args.token_stdin,
        direct_token_file=path(args.direct_token_file),
        issuer_url=args.issuer_url,
        aws_role_arn=args.aws_role_arn,
        aws_identity=args.aws_identity,
        aws_audience=args.aws_audience,
        aws_duration=args.aws_duration,
        aws_region=args.aws_region,
        aws_sts_endpoint=args.aws_sts_endpoint,
        aws_endpoint_url=args.aws_endpoint_url,
        host=args.host,
        port=args.port,
        link_local=args.link_local,
        allow_uids=frozenset(_uid(text) for text in args.allow_uid),
        any_local_peer=args.any_local_peer,
        run_dir=path(args.run_dir) or default_run_dir(),
        env_file=path(args.env_file),
        exit_with=args.exit_with,
        audit_log=args.audit_log,
        ready_timeout=args.ready_timeout,
        keep_aws_config=args.keep_aws_config,
        clouds=frozenset(c.strip() for c in args.clouds.split(",") if c.strip())
        if args.clouds
        else None,
        gcp_identity=args.gcp_identity,
        gcp_project_id=args.gcp_project_id,
        gcp_sts_url=args.gcp_sts_url,
        gcp_iam_url=args.gcp_iam_url,
        gcp_lifetime=args.gcp_lifetime,
        azure_identity=args.azure_identity,
        azure_authority=args.azure_authority,
        job_env=dict(item.split("=", 1) for item in args.job_env if "=" in item),
        ca_file=path(args.ca_file),
    )
