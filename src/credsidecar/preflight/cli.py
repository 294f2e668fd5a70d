"""`credsidecar preflight`: its flags (one table, as `serve`'s), its config, and its handler.

Building the parser imports only the standard library and the option tables: `--help` and every
other command stay light; the handler imports the checks when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from credsidecar.clouds.contracts import AZURE_AUTHORITY, GCP_IAM_URL, GCP_STS_URL
from credsidecar.config import SIDECAR_OPTIONS, SidecarConfig
from credsidecar.options import SWITCH, TEXT, Option, add_options, build, group
from credsidecar.preflight.model import CloudEndpoints

__all__ = [
    "PREFLIGHT_OPTIONS",
    "PreflightConfig",
    "add_preflight_parser",
    "preflight_command",
]

DEFAULT_GCS_URL = "https://storage.googleapis.com"


@dataclass(frozen=True)
class PreflightConfig:
    token_file: Path | None = None  # before launch; None: in the job, from its environment
    issuer_url: str | None = None
    aws_region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    aws_sts_endpoint: str | None = None
    aws_endpoint_url: str | None = None
    gcp_sts_url: str = GCP_STS_URL
    gcp_iam_url: str = GCP_IAM_URL
    azure_authority: str = AZURE_AUTHORITY
    ca_file: Path | None = None
    gcs_endpoint_url: str | None = None
    azure_blob_url: str | None = None
    no_write_probe: bool = False

    @property
    def write_probe(self) -> bool:
        return not self.no_write_probe

    def endpoints(self, env: Mapping[str, str]) -> CloudEndpoints:
        """Where the storage APIs are: the flags, else the variables the SDKs themselves read
        (in a job, `credsidecar env` may have set them), else the public clouds."""
        return CloudEndpoints(
            s3_url=self.aws_endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            aws_region=self.aws_region
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            gcs_url=self.gcs_endpoint_url or env.get("API_ENDPOINT_OVERRIDE") or DEFAULT_GCS_URL,
            azure_blob_url=self.azure_blob_url,
            ca_file=str(self.ca_file) if self.ca_file else None,
        )

    def sidecar_config(self) -> SidecarConfig:
        """The sidecar's config for the same launch: the exchanges are made with its settings."""
        return SidecarConfig(
            token_file=self.token_file,
            issuer_url=self.issuer_url,
            aws_region=self.aws_region or "us-east-1",
            aws_sts_endpoint=self.aws_sts_endpoint,
            gcp_sts_url=self.gcp_sts_url,
            gcp_iam_url=self.gcp_iam_url,
            azure_authority=self.azure_authority,
            ca_file=self.ca_file,
        )


def _sidecar(flag: str, help_text: str | None = None, metavar: str = "URL") -> Option:
    """`serve`'s option (its flag, variable and parsing), for the same setting here."""
    option = next(o for o in SIDECAR_OPTIONS if o.flag == flag)
    return dataclasses.replace(option, help=help_text or option.help, metavar=metavar)


# fmt: off
PREFLIGHT_OPTIONS: tuple[Option, ...] = (
    *group(
        "before launch (--token-file): the issuer and the clouds' token services",
        _sidecar("--issuer-url"),
        _sidecar("--aws-region", "region of the S3 and STS endpoints (default $AWS_REGION, else "
                 "us-east-1)", "REGION"),
        _sidecar("--aws-sts-endpoint"),
        _sidecar("--gcp-sts-url"),
        _sidecar("--gcp-iam-url"),
        _sidecar("--azure-authority"),
        _sidecar("--ca-file", "PEM CA certificates to trust besides the system's (a private "
                 "issuer's, the sandbox's)", "FILE"),
    ),
    *group(
        "storage endpoints (default: the public clouds)",
        Option("--aws-endpoint-url", TEXT, "S3 endpoint URL (default $AWS_ENDPOINT_URL_S3, else "
               "$AWS_ENDPOINT_URL)", "URL"),
        Option("--gcs-endpoint-url", TEXT, "Cloud Storage API URL (default "
               "$API_ENDPOINT_OVERRIDE, as google-cloud-storage reads it)", "URL"),
        Option("--azure-blob-url", TEXT, "Blob service URL of the storage account (default "
               "https://ACCOUNT.blob.core.windows.net; the sandbox prints its own)", "URL"),
    ),
    Option("--no-write-probe", SWITCH, "do not write and delete a marker object to test write "
           "access (write is then reported as not verified)"),
)
# fmt: on


def add_preflight_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "preflight",
        help="check that the launching user can reach a run's paths",
        description="Check, as the launching user, the access a run needs to its paths: inside "
        "the job through the sidecar (the environment `credsidecar env` prints), or before "
        "launch from the launch token (--token-file). Exit 0: every path is fine; 1: some "
        "path is denied or missing; 2: some path could not be checked. Every option flag also "
        "reads CREDSIDECAR_<FLAG> from the environment.",
    )
    parser.add_argument("paths", nargs="*", metavar="URI", help="paths to read (as --read)")
    parser.add_argument("--read", action="append", default=[], metavar="URI",
                        help="a path the run reads (repeatable)")  # fmt: skip
    parser.add_argument("--write", action="append", default=[], metavar="URI",
                        help="a path the run writes (repeatable)")  # fmt: skip
    parser.add_argument("--work-dir", action="append", default=[], metavar="URI",
                        help="a work directory: read, write and delete (repeatable)")  # fmt: skip
    parser.add_argument("--paths-from", action="append", default=[], type=Path, metavar="FILE",
                        help="one path per line, `#` comments, optionally preceded by read, "
                        "write or work-dir")  # fmt: skip
    parser.add_argument("--samplesheet", action="append", default=[], type=Path, metavar="CSV",
                        help="every cloud URI in its cells is read")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_options(parser, PREFLIGHT_OPTIONS, PreflightConfig, os.environ)
    # No variable: which of the two modes runs is always explicit (a job may hold
    # $CREDSIDECAR_TOKEN_FILE for its HPC logins and still be checked through its sidecar).
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="before launch: the launch token, exchanged here as the sidecar "
                        "would (no sidecar needed); without it, the job's environment is "
                        "used")  # fmt: skip
    parser.set_defaults(func=preflight_command)


def preflight_command(args: argparse.Namespace) -> int:
    """Parses, runs one preflight, prints the report; returns its exit status."""
    import asyncio

    from credsidecar.preflight.report import exit_code, render_json, render_text
    from credsidecar.preflight.run import run_preflight
    from credsidecar.preflight.targets import targets_from_args

    config = build(PreflightConfig, PREFLIGHT_OPTIONS, args)
    if args.token_file is not None:
        config = dataclasses.replace(config, token_file=args.token_file.resolve())
    targets = targets_from_args(
        read=[*args.paths, *args.read],
        write=args.write,
        work_dirs=args.work_dir,
        paths_from=args.paths_from,
        samplesheets=args.samplesheet,
    )
    if not targets:
        print("credsidecar preflight: no paths to check; give URIs, --read, --write, "
              "--work-dir, --paths-from or --samplesheet", file=sys.stderr)  # fmt: skip
        return 2
    report = asyncio.run(run_preflight(targets, config, dict(os.environ)))
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    return exit_code(report)
