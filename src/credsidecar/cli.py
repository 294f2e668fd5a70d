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
credsidecar preflight                check a run's paths as its user (preflight/cli.py)
credsidecar serve                    the sidecar beside a job; env: the job's environment
credsidecar healthcheck              exit 0 when the sidecar is ready (an exec probe)
credsidecar smoke                    call every endpoint as the SDKs do, from the job (smoke/)
credsidecar start / run              the sidecar inside a task, no second container
                                     (launcher.py)
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
from credsidecar.errors import ConfigError, CredsidecarError

if TYPE_CHECKING:  # commands import what they run: building the parser stays light
    import asyncio

__all__ = ["main"]

log = logging.getLogger("credsidecar")


# What the `sandbox` extra brings: `dev` and `sandbox` cannot run without it (the container
# image, for one, installs only what `serve` and `issuer` need).
_SANDBOX_MODULES = frozenset({"moto", "boto3", "botocore", "werkzeug", "flask"})


def _with_sandbox(run: Callable[[], int], command: str) -> int:
    try:
        return run()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SANDBOX_MODULES:
            raise
        raise ConfigError(
            f"`credsidecar {command}` needs the sandbox clouds, which are not installed here "
            f"(no module {exc.name!r}); install them with `pip install 'credsidecar[sandbox]'`"
        ) from None


def _cmd_dev(args: argparse.Namespace) -> int:
    import asyncio

    def run() -> int:
        from credsidecar.dev import run_dev

        return asyncio.run(run_dev(args))

    return _with_sandbox(run, "dev")


def _cmd_sandbox(args: argparse.Namespace) -> int:
    import asyncio

    def run() -> int:
        from credsidecar.dev import run_sandbox

        return asyncio.run(run_sandbox(args))

    return _with_sandbox(run, "sandbox")


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


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    from pathlib import Path

    from credsidecar.config import default_run_dir
    from credsidecar.launcher import healthcheck

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir()
    ready, reason = healthcheck(run_dir, args.timeout)
    if not ready:
        print(f"credsidecar: {reason}", file=sys.stderr)
    return 0 if ready else 1


def _cmd_smoke(args: argparse.Namespace) -> int:
    from credsidecar.smoke.command import smoke

    return smoke(args)


def _launcher_flags(args: argparse.Namespace) -> list[str]:
    """The words after `start`/`run` as typed (before `--`), without the launcher's own."""
    from credsidecar.launcher import serve_argv

    raw: list[str] = args.raw_argv
    at = next(i for i, word in enumerate(raw)
              if word == args.command and (i == 0 or raw[i - 1] != "--log-level"))  # fmt: skip
    tail = raw[at + 1 :]
    return serve_argv(tail[: tail.index("--")] if "--" in tail else tail)


def _cmd_start(args: argparse.Namespace) -> int:
    import os

    from credsidecar.config import from_args
    from credsidecar.launcher import start_detached

    config = from_args(args)  # refuses bad flags here, before anything starts
    exit_with = config.exit_with if config.exit_with is not None else os.getppid()
    text = start_detached(
        _launcher_flags(args),
        config.run_dir,
        exit_with,
        args.wait,
        args.log_file,
        config.token_stdin,
    )
    sys.stdout.write(text)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from credsidecar.config import from_args
    from credsidecar.launcher import run_command

    config = from_args(args)
    if "--" not in args.raw_argv:
        print("credsidecar run: put the command after `--`, e.g. `credsidecar run "
              "--token-file F -- aws s3 ls`", file=sys.stderr)  # fmt: skip
        return 2
    return run_command(
        _launcher_flags(args),
        args.job_command,
        config.run_dir,
        args.wait,
        args.log_file,
        config.token_stdin,
    )


def _add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from credsidecar.config import add_sidecar_arguments

    add_sidecar_arguments(parser, os.environ)
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up if the sidecar is not ready within this many seconds (default 60)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        help="the sidecar's log (default: sidecar.log in the run directory)",
    )


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

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when the sidecar is ready (a probe; needs no curl)",
        description="GET /readyz at the sidecar using this run directory (the one `credsidecar "
        "env` reads): exit 0 when it is ready, 1 with the reason otherwise.",
    )
    health.add_argument(
        "--run-dir",
        default=os.environ.get("CREDSIDECAR_RUN_DIR"),
        help="the sidecar's --run-dir (default: $CREDSIDECAR_RUN_DIR, else serve's default)",
    )
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="default 2")
    health.set_defaults(func=_cmd_healthcheck)

    smoke = commands.add_parser(
        "smoke",
        help="check every emulated endpoint from inside the job, as the SDKs call it",
        description="Call each endpoint the job environment names (AWS container and IMDSv2, "
        "GCP metadata, Azure App Service and IMDS) the way the SDKs do; per check: OK or the "
        "contract violated, the identity, the credential's remaining lifetime, the latency. "
        "Exit 0 all OK, 1 a violation, 2 nothing configured or bad usage.",
    )
    smoke.add_argument("--json", action="store_true", help="the report as JSON")
    smoke.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="overall time limit for all checks (default 5)",
    )
    smoke.add_argument(
        "--audience",
        default="https://credsidecar.invalid/smoke",
        help="audience of the GCP ID token asked for (default %(default)s)",
    )
    smoke.add_argument(
        "--azure-resource",
        default="https://management.azure.com/",
        help="resource of the Azure tokens asked for (default %(default)s)",
    )
    smoke.add_argument(
        "--run-dir",
        help="check the environment `credsidecar env --run-dir DIR` prints instead of this "
        "process's (e.g. as a probe in the sidecar's container)",
    )
    smoke.set_defaults(func=_cmd_smoke)

    start = commands.add_parser(
        "start",
        allow_abbrev=False,
        help="start the sidecar in the background and print the job environment",
        description='`eval "$(credsidecar start --token-file F --exit-with $$)"`: start `serve` '
        "detached (same flags; output to --log-file), tied to --exit-with (default: the "
        "calling shell), wait until it is ready and print the export/unset lines.",
    )
    _add_launcher_arguments(start)
    start.set_defaults(func=_cmd_start)

    run = commands.add_parser(
        "run",
        allow_abbrev=False,
        help="run a command with the sidecar's job environment",
        description="`credsidecar run [serve flags] -- CMD ARGS...`: start the sidecar, run CMD "
        "with the job environment, stop the sidecar when CMD ends and exit with CMD's status.",
    )
    _add_launcher_arguments(run)
    run.add_argument("job_command", nargs="*", metavar="CMD", help="after `--`")
    run.set_defaults(func=_cmd_run)

    from credsidecar.hpc.cli import add_hpc_parser

    add_hpc_parser(commands)

    from credsidecar.preflight.cli import add_preflight_parser

    add_preflight_parser(commands)

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
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
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
        code = int(args.func(args))
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return code
    except CredsidecarError as exc:
        print(f"credsidecar: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`credsidecar ... | head`): what it wanted it has. Point stdout
        # at /dev/null so the interpreter's final flush does not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped
