"""`credsidecar smoke`: read the job environment, run the checks, print the report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from credsidecar.errors import ConfigError
from credsidecar.smoke.report import render_json, render_table
from credsidecar.smoke.runner import Options, run_smoke

__all__ = ["smoke"]

MAX_TIMEOUT = 600.0
MAX_AUDIENCE = 512  # the sidecar refuses longer ones


def _environment(run_dir: str | None) -> Mapping[str, str]:
    """This process's environment, or the one a job gets from `credsidecar env --run-dir`."""
    if run_dir is None:
        return os.environ
    from credsidecar.config import RUN_DIR_REMEDY
    from credsidecar.jobenv import ENV_FILE_NAME
    from credsidecar.launcher import parse_job_environment
    from credsidecar.private_files import read_private_text

    path = Path(run_dir) / ENV_FILE_NAME
    # The same trust rules as `credsidecar env`: a file another user could plant is refused.
    text = read_private_text(path, directory="run directory", remedy=RUN_DIR_REMEDY)
    return parse_job_environment(text).applied_to(os.environ)


def _options(args: argparse.Namespace) -> Options:
    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise ConfigError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    if not args.audience or len(args.audience) > MAX_AUDIENCE:
        raise ConfigError(f"--audience must be 1..{MAX_AUDIENCE} characters")
    return Options(args.timeout, args.audience, args.azure_resource)


def smoke(args: argparse.Namespace) -> int:
    options = _options(args)
    try:
        env = _environment(args.run_dir)
    except FileNotFoundError:
        print(
            f"credsidecar smoke: no ready sidecar uses run directory {args.run_dir} (no env "
            "file yet); start `credsidecar serve` or pass its --run-dir",
            file=sys.stderr,
        )
        return 1
    report = run_smoke(env, options)
    sys.stdout.write(render_json(report) if args.json else render_table(report))
    sys.stdout.flush()  # the report before any message on stderr, when both go to one place
    if not report.configured:
        print(
            "credsidecar smoke: no credsidecar endpoint is configured in this environment (no "
            "AWS, GCP or Azure metadata variable is set); run it in the job after "
            '`eval "$(credsidecar env)"`, or pass --run-dir of the sidecar',
            file=sys.stderr,
        )
    return report.exit_code
