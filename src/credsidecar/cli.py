"""The `credsidecar` command line.

credsidecar issuer [serve]           run the OIDC issuer
credsidecar issuer export-discovery  write discovery + JWKS for a public bucket
credsidecar issuer rotate-key        activate (or --stage) a new signing key
credsidecar issuer status            users x providers identity table
credsidecar issuer new-api-key       a platform API key and its digest for the config
credsidecar issuer revoke-run        revoke a run; disable-user / enable-user
credsidecar issuer new-user-key      a member API key; new-kek: key-encryption key file
credsidecar token mint               mint a launch token locally (admins, development)
                                     (issuer and token commands: issuer/cli.py)
credsidecar hpc ...                  per-user SSH to HPC clusters (hpc/cli.py)
credsidecar serve                    the sidecar beside a job; env: the job's environment
credsidecar sandbox                  only the local sandbox clouds
credsidecar dev                      run the whole flow locally with no cloud account
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from credsidecar import __version__
from credsidecar.errors import CredsidecarError

if TYPE_CHECKING:  # commands import what they run: building the parser stays light
    import asyncio

__all__ = ["main"]

log = logging.getLogger("credsidecar")


def _cmd_dev(args: argparse.Namespace) -> int:
    import asyncio

    from credsidecar.dev import run_dev

    return asyncio.run(run_dev(args))


def _cmd_sandbox(args: argparse.Namespace) -> int:
    import asyncio

    from credsidecar.dev import run_sandbox

    return asyncio.run(run_sandbox(args))


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed: the sidecar's request path is pure event-loop work."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from credsidecar.config import from_args
    from credsidecar.daemon import run_sidecar

    config = from_args(args)
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(run_sidecar(config))


def _cmd_env(args: argparse.Namespace) -> int:
    import time

    from credsidecar.config import RUN_DIR_REMEDY, env_command_from_args
    from credsidecar.jobenv import ENV_FILE_NAME
    from credsidecar.private_files import read_private_text

    config = env_command_from_args(args)
    path = config.run_dir / ENV_FILE_NAME
    deadline = time.monotonic() + config.wait
    while True:
        try:
            # The shell evals this text: a directory or file another user planted or can
            # change is refused (ConfigError, exit 2) before anything is printed.
            text = read_private_text(path, directory="run directory", remedy=RUN_DIR_REMEDY)
            break
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                print(
                    f"credsidecar: no ready sidecar uses run directory {path.parent} (no "
                    f"{path.name} file); start `credsidecar serve` or pass its --run-dir",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.1)
    sys.stdout.write(text)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credsidecar",
        description="Per-user, credential-less cloud and HPC identity for pipeline jobs.",
    )
    parser.add_argument("--version", action="version", version=f"credsidecar {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CREDSIDECAR_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default INFO, or $CREDSIDECAR_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from credsidecar.issuer.cli import add_issuer_parsers

    add_issuer_parsers(commands)

    from credsidecar.config import add_env_command_arguments, add_sidecar_arguments

    serve = commands.add_parser(
        "serve",
        help="run the sidecar beside a job",
        description="Exchange the launch token for the user's short-lived cloud credentials and "
        "serve them on emulated metadata endpoints on 127.0.0.1. Every flag also reads "
        "CREDSIDECAR_<FLAG> from the environment (switches: 1/true/yes or 0/false/no; lists: "
        "comma-separated); a flag given wins over its variable.",
    )
    add_sidecar_arguments(serve, os.environ)
    serve.set_defaults(func=_cmd_serve)

    env = commands.add_parser(
        "env",
        help="print the export/unset lines a job needs",
        description="Print the job environment of the sidecar using this run directory: "
        '`eval "$(credsidecar env)"` in the job.',
    )
    add_env_command_arguments(env, os.environ)
    env.set_defaults(func=_cmd_env)

    from credsidecar.hpc.cli import add_hpc_parser

    add_hpc_parser(commands)

    sandbox = commands.add_parser(
        "sandbox",
        help="run only the local sandbox clouds for an issuer",
        description="Start the sandbox clouds (AWS, GCP and Azure stand-ins that enforce "
        "permissions) trusting the given issuer; print their endpoints, and the `serve` flags "
        "that point a sidecar at them, as JSON.",
    )
    sandbox.add_argument("--issuer-url", required=True, help="issuer the sandbox trusts")
    sandbox.add_argument("--aws-audience", default="sts.amazonaws.com")
    sandbox.add_argument(
        "--azure-token-lifetime",
        type=int,
        default=3600,
        help="lifetime of the Entra stand-in's access tokens in seconds (short ones exercise "
        "renewal)",
    )
    sandbox.add_argument("--info-file", help="also write the JSON description here")
    sandbox.set_defaults(func=_cmd_sandbox)

    dev = commands.add_parser(
        "dev",
        help="run issuer, sandbox clouds and a sidecar locally (no cloud account needed)",
        description="Start an issuer with the example policy, the sandbox clouds and a sidecar "
        "for the user, write the job environment once ready, print what to try, and run until "
        "interrupted.",
    )
    dev.add_argument("--user", default="alice", help="user the sidecar acts for (alice or bob)")
    dev.add_argument("--env-file", help="write the job environment here once ready")
    dev.add_argument("--info-file", help="write a JSON description of the running pieces here")
    dev.add_argument(
        "--aws-duration",
        type=int,
        default=3600,
        help="AWS credential lifetime in seconds (short ones exercise renewal)",
    )
    dev.set_defaults(func=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "issuer":
        from credsidecar.issuer.cli import serve_needs_config

        if serve_needs_config(args):
            parser.error("credsidecar issuer: --config is required to serve")
    try:
        return int(args.func(args))
    except CredsidecarError as exc:
        print(f"credsidecar: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
