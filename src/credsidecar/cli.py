"""The `credsidecar` command line.

credsidecar issuer [serve]           run the OIDC issuer
credsidecar issuer export-discovery  write discovery + JWKS for a public bucket
credsidecar issuer rotate-key        activate (or --stage) a new signing key
credsidecar issuer status            users x providers identity table
credsidecar issuer new-api-key       a platform API key and its digest for the config
credsidecar issuer revoke-run        revoke a run; disable-user / enable-user
credsidecar issuer new-user-key      a member API key; new-kek: key-encryption key file
credsidecar hpc ...                  per-user SSH to HPC clusters (hpc/cli.py)
credsidecar token mint               mint a launch token locally (admins, development)
credsidecar dev                      run the whole flow locally with no cloud account
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from credsidecar import __version__
from credsidecar.errors import CredsidecarError

__all__ = ["main"]

log = logging.getLogger("credsidecar")


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from credsidecar.issuer.config import load_config

    return load_config(Path(args.config))


def _cmd_issuer_serve(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import serve

    asyncio.run(serve(_config(args)))
    return 0


def _cmd_export_discovery(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import export_discovery, open_service

    with open_service(_config(args)) as service:
        for path in export_discovery(service, Path(args.directory)):
            print(path)
    print(
        "Upload the .well-known folder so that "
        f"{service.config.issuer_url}/.well-known/openid-configuration serves it over HTTPS.",
        file=sys.stderr,
    )
    return 0


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import open_service

    with open_service(_config(args)) as service:
        kid = service.keys.rotate(stage=args.stage)
        service.audit.event("key.staged" if args.stage else "key.rotated", kid=kid)
        verb = "staged (published, not yet signing)" if args.stage else "active"
        print(f"key {kid} is now {verb}")
        for record in service.keys.records:
            print(f"  {record.kid}  {record.alg}  {record.state}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from credsidecar.issuer.hpc_service import Member, hpc_status_table
    from credsidecar.issuer.runner import open_service
    from credsidecar.issuer.status import status_rows, status_table

    with open_service(_config(args)) as service:
        if args.json:  # the clouds; `credsidecar hpc status --json` gives the HPC rows
            print(json.dumps(status_rows(service.policy, service.store), indent=2))
        else:
            print(status_table(service.policy, service.store))
            print()
            everyone = Member("(admin)", owner=True, key_name="cli")
            print(hpc_status_table(service.hpc.status(everyone)))
    return 0


def _cmd_new_api_key(args: argparse.Namespace) -> int:
    from credsidecar.issuer.config import new_api_key

    key, digest = new_api_key()
    print(f"# Give this key to the platform (shown once):\n{key}\n")
    print(f'# Add this to the issuer config:\n[[platform_keys]]\nname = "{args.name}"')
    print(f'sha256 = "{digest}"')
    return 0


def _cmd_new_user_key(args: argparse.Namespace) -> int:
    from credsidecar.issuer.hpc_service import new_user_key
    from credsidecar.issuer.runner import open_service

    with open_service(_config(args)) as service:
        service.policy.user(args.user)  # a member must be a policy user
        key, digest = new_user_key()
        service.hpc.registry.add_user_key(digest, args.user, args.name)
        service.audit.event("member_key.created", user=args.user, name=args.name)
    print(f"# Member API key for {args.user} ({args.name}); shown once, give it to them:")
    print(key)
    return 0


def _cmd_revoke_user_key(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import open_service

    with open_service(_config(args)) as service:
        removed = service.hpc.registry.revoke_user_keys(args.user, args.name)
        service.audit.event("member_key.revoked", user=args.user, name=args.name, count=removed)
    which = f"named {args.name!r}" if args.name else "(all)"
    print(f"revoked {removed} member API key(s) of {args.user} {which}")
    return 0 if removed else 1


def _cmd_new_kek(args: argparse.Namespace) -> int:
    from credsidecar.issuer.sealing import new_kek_text
    from credsidecar.private_files import write_private_atomic

    path = Path(args.path)
    if path.exists():
        print(
            f"credsidecar: {path} exists; a new key would orphan every stored secret",
            file=sys.stderr,
        )
        return 1
    write_private_atomic(path, new_kek_text())
    print(
        f"wrote a key-encryption key to {path} (mode 0600); set [hpc] "
        f'key_encryption_key_file = "{path}" in the issuer config and back it up separately'
    )
    return 0


def _cmd_revoke_run(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import open_service

    with open_service(_config(args)) as service:
        fresh = service.revoke_run(args.run, args.reason, caller="cli")
    print(f"run {args.run} {'revoked' if fresh else 'was already revoked'}")
    return 0


def _toggle_user(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from credsidecar.issuer.runner import open_service

        with open_service(_config(args)) as service:
            service.set_user_disabled(args.user, disabled, args.reason, caller="cli")
        print(f"user {args.user} {'disabled' if disabled else 'enabled'}")
        return 0

    return command


def _cmd_token_mint(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import open_service
    from credsidecar.issuer.service import LaunchRequest

    selections: dict[str, list[str]] = {}
    for item in args.identity or []:
        provider, sep, name = item.partition("=")
        if not sep:
            raise SystemExit(f"--identity {item!r}: use PROVIDER=NAME, e.g. aws=alice-data")
        selections.setdefault(provider, []).append(name)
    body = {
        "user": args.user,
        "run": args.run,
        "workspace": args.workspace,
        "pipeline": args.pipeline,
        "identities": selections,
        "lifetime": args.lifetime,
    }
    request = LaunchRequest.from_json({k: v for k, v in body.items() if v})
    with open_service(_config(args)) as service:
        result = service.mint(request, caller="cli")
    if args.out:
        from credsidecar.private_files import write_private_atomic

        out = Path(args.out)
        # A new 0600 file renamed into place: an existing file keeps neither its mode nor inode.
        write_private_atomic(out, result.token)
        print(f"launch token {result.jti} (expires {result.expires_at}) written to {out}")
    elif args.json:
        print(
            json.dumps(
                {
                    "token": result.token,
                    "jti": result.jti,
                    "kid": result.kid,
                    "expires_at": result.expires_at,
                    "identities": result.identities,
                }
            )
        )
    else:
        print(result.token)
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from credsidecar.dev import run_dev

    return asyncio.run(run_dev(args))


def _cmd_sandbox(args: argparse.Namespace) -> int:
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
    from credsidecar.config import from_args
    from credsidecar.daemon import run_sidecar

    config = from_args(args)
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(run_sidecar(config))


def _cmd_env(args: argparse.Namespace) -> int:
    import time

    from credsidecar.config import RUN_DIR_REMEDY, default_run_dir
    from credsidecar.daemon import ENV_FILE_NAME
    from credsidecar.private_files import read_private_text

    path = Path(args.run_dir or default_run_dir()) / ENV_FILE_NAME
    deadline = time.monotonic() + args.wait
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

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", required=True, help="issuer config file (TOML)")
        return p

    issuer = commands.add_parser(
        "issuer",
        help="run and administer the OIDC issuer",
        description="Run and administer the OIDC issuer.",
    )
    issuer.set_defaults(func=_cmd_issuer_serve)
    issuer.add_argument("--config", help="issuer config file (TOML), for serving")
    sub = issuer.add_subparsers(dest="issuer_command", metavar="ACTION")
    with_config(sub.add_parser("serve", help="serve the issuer (the default action)")).set_defaults(
        func=_cmd_issuer_serve
    )
    p = with_config(sub.add_parser("export-discovery", help="write discovery + JWKS files"))
    p.add_argument("directory", help="output directory (its .well-known/ goes to a public bucket)")
    p.set_defaults(func=_cmd_export_discovery)
    p = with_config(sub.add_parser("rotate-key", help="activate a new signing key"))
    p.add_argument(
        "--stage",
        action="store_true",
        help="only publish the new key; the next rotate-key activates it",
    )
    p.set_defaults(func=_cmd_rotate_key)
    p = with_config(sub.add_parser("status", help="users x providers identity table"))
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("new-api-key", help="generate a platform API key and its config digest")
    p.add_argument("--name", default="platform", help="name recorded in the audit trail")
    p.set_defaults(func=_cmd_new_api_key)
    p = with_config(sub.add_parser("new-user-key", help="a member API key (HPC management)"))
    p.add_argument("--user", required=True, help="the policy user it authenticates")
    p.add_argument("--name", default="default", help="a label, e.g. the device")
    p.set_defaults(func=_cmd_new_user_key)
    p = with_config(sub.add_parser("revoke-user-key", help="revoke member API keys"))
    p.add_argument("--user", required=True)
    p.add_argument("--name", help="only the key with this label (default: all of the user's)")
    p.set_defaults(func=_cmd_revoke_user_key)
    p = sub.add_parser("new-kek", help="write a key-encryption key for stored SSH keys")
    p.add_argument("path", help="file to create (mode 0600)")
    p.set_defaults(func=_cmd_new_kek)
    p = with_config(sub.add_parser("revoke-run", help="revoke a run: later exchanges fail"))
    p.add_argument("run")
    p.add_argument("--reason")
    p.set_defaults(func=_cmd_revoke_run)
    for name, disabled in (("disable-user", True), ("enable-user", False)):
        p = with_config(sub.add_parser(name, help=f"{name.split('-')[0]} a user's launches"))
        p.add_argument("user")
        p.add_argument("--reason")
        p.set_defaults(func=_toggle_user(disabled))

    token = commands.add_parser(
        "token",
        help="launch tokens from the command line",
        description="Launch tokens from the command line.",
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = with_config(token_sub.add_parser("mint", help="mint a launch token locally"))
    p.add_argument("--user", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--workspace")
    p.add_argument("--pipeline")
    p.add_argument(
        "--identity",
        action="append",
        metavar="PROVIDER=NAME",
        help="select a granted identity (repeatable)",
    )
    p.add_argument("--lifetime", type=int, help="seconds (default from the issuer config)")
    p.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")
    p.add_argument("--json", action="store_true", help="print token, jti and expiry as JSON")
    p.set_defaults(func=_cmd_token_mint)

    from credsidecar.config import add_sidecar_arguments, default_run_dir

    serve = commands.add_parser(
        "serve",
        help="run the sidecar beside a job",
        description="Exchange the launch token for the user's short-lived cloud credentials and "
        "serve them on emulated metadata endpoints on 127.0.0.1. Every flag also reads "
        "CREDSIDECAR_<FLAG> from the environment.",
    )
    add_sidecar_arguments(serve, os.environ)
    serve.set_defaults(func=_cmd_serve)

    env = commands.add_parser(
        "env",
        help="print the export/unset lines a job needs",
        description="Print the job environment of the sidecar using this run directory: "
        '`eval "$(credsidecar env)"` in the job.',
    )
    env.add_argument(
        "--run-dir",
        default=os.environ.get("CREDSIDECAR_RUN_DIR"),
        help=f"the sidecar's --run-dir (default {default_run_dir()})",
    )
    env.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the sidecar to become ready",
    )
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
    if args.command == "issuer" and args.func is _cmd_issuer_serve and not args.config:
        parser.error("credsidecar issuer: --config is required to serve")
    try:
        return int(args.func(args))
    except CredsidecarError as exc:
        print(f"credsidecar: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
