"""`credsidecar issuer ...` and `credsidecar token ...`: the issuer's command line.

credsidecar issuer [serve]           run the OIDC issuer
credsidecar issuer export-discovery  write discovery + JWKS for a public bucket
credsidecar issuer rotate-key        activate (or --stage) a new signing key
credsidecar issuer status            users x providers identity table (and HPC's members x clusters)
credsidecar issuer explain           which identities a launch would get per provider, and why
credsidecar issuer new-api-key       a platform API key and its digest for the config
credsidecar issuer revoke-run        revoke a run; disable-user / enable-user
credsidecar issuer migrate           apply the database's schema migrations (serve does too)
credsidecar issuer new-user-key      a member API key; revoke-user-key; new-kek: key-encryption key
credsidecar token mint               mint a launch token locally (admins, development)

Each handler parses, makes one call to the issuer's services (which write the audit trail and
the registry) and prints. What a handler needs is imported when it runs: building the parser
must not load aiohttp, joserfc, asyncssh or cryptography (`credsidecar --help` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from credsidecar.issuer.assembly import Issuer

__all__ = ["add_issuer_parsers"]


@contextmanager
def _issuer(args: argparse.Namespace) -> Iterator[Issuer]:
    """The issuer's services over its state, from `--config`."""
    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.runner import open_service

    with open_service(load_config(Path(args.config))) as issuer:
        yield issuer


def _cmd_issuer_serve(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.runner import serve

    config = load_config(Path(args.config))
    if getattr(args, "workers", None) is not None:
        config = dataclasses.replace(config, workers=args.workers)
    asyncio.run(serve(config))
    return 0


def _workers(text: str) -> int:
    """`--workers N|auto` (auto: 0, one per core), as `workers` in the config."""
    from credsidecar.issuer.config import MAX_WORKERS

    if text == "auto":
        return 0
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"give a number of processes, 1-{MAX_WORKERS}, or auto")
    return int(text)


def _with_workers(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument("--workers", type=_workers, default=default, metavar="N|auto",
                   help="worker processes on the one listening socket (default: `workers` in "
                   "the config, else 1; auto: one per core)")  # fmt: skip


def _cmd_export_discovery(args: argparse.Namespace) -> int:
    from credsidecar.issuer.runner import export_discovery

    with _issuer(args) as issuer:
        written = export_discovery(issuer, Path(args.directory))
    for path in written:
        print(path)
    print(
        "Upload the .well-known folder so that "
        f"{issuer.config.issuer_url}/.well-known/openid-configuration serves it over HTTPS.",
        file=sys.stderr,
    )
    return 0


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    with _issuer(args) as issuer:
        kid = issuer.tokens.rotate_key(stage=args.stage)
        records = issuer.keys.records
    (new,) = [r for r in records if r.kid == kid]
    if new.state == "active":
        verb = "active"
    elif new.activate_at is None:
        verb = "staged (published, not yet signing)"
    else:  # keys.PUBLISH_DELAY: every replica publishes it before any signs with it
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(new.activate_at))
        verb = f"published; it signs from {when}, once every replica publishes it"
    print(f"key {kid} is now {verb}")
    for record in records:
        print(f"  {record.kid}  {record.alg}  {record.state}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from credsidecar.issuer.status import hpc_status_table, status_rows, status_table

    with _issuer(args) as issuer:
        if args.json:  # the clouds; `credsidecar hpc status --json` gives the HPC rows
            print(json.dumps(status_rows(issuer.policy, issuer.store), indent=2))
        else:
            print(status_table(issuer.policy, issuer.store))
            print()
            print(hpc_status_table(issuer.hpc.status_of_everyone()))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from credsidecar.issuer.explain import explain, render

    with _issuer(args) as issuer:
        result = explain(issuer.tokens, args.user, args.workspace, args.pipeline)
    print(json.dumps(result.to_json(), indent=2) if args.json else render(result))
    return 1 if result.refused else 0


def _cmd_new_api_key(args: argparse.Namespace) -> int:
    from credsidecar.issuer.config import new_api_key

    key, digest = new_api_key()
    print(f"# Give this key to the platform (shown once):\n{key}\n")
    print(f'# Add this to the issuer config:\n[[platform_keys]]\nname = "{args.name}"')
    print(f'sha256 = "{digest}"')
    return 0


def _cmd_new_user_key(args: argparse.Namespace) -> int:
    with _issuer(args) as issuer:
        key = issuer.hpc.new_member_key(args.user, args.name)
    print(f"# Member API key for {args.user} ({args.name}); shown once, give it to them:")
    print(key)
    return 0


def _cmd_revoke_user_key(args: argparse.Namespace) -> int:
    with _issuer(args) as issuer:
        removed = issuer.hpc.revoke_member_keys(args.user, args.name)
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
    with _issuer(args) as issuer:
        fresh = issuer.tokens.revoke_run(args.run, args.reason, caller="cli")
    print(f"run {args.run} {'revoked' if fresh else 'was already revoked'}")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.store import migrate, open_store
    from credsidecar.issuer.store.migrations import latest_version

    config = load_config(Path(args.config))
    if not config.store.postgres:  # the SQLite file's directory, as serving makes it
        config.state_dir.mkdir(parents=True, exist_ok=True)
        config.state_dir.chmod(0o700)
    store = open_store(config, migrate=False)
    try:
        applied = migrate(store)
    finally:
        store.close()
    if applied:
        print(f"applied schema version(s) {', '.join(map(str, applied))} to {store.name}")
    print(f"{store.name} is at schema version {latest_version()}")
    return 0


def _toggle_user(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        with _issuer(args) as issuer:
            issuer.tokens.set_user_disabled(args.user, disabled, args.reason, caller="cli")
        print(f"user {args.user} {'disabled' if disabled else 'enabled'}")
        return 0

    return command


def _launch_request_body(args: argparse.Namespace) -> dict[str, Any]:
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
    return {k: v for k, v in body.items() if v}


def _cmd_token_mint(args: argparse.Namespace) -> int:
    from credsidecar.issuer.launch_request import LaunchRequest

    request = LaunchRequest.from_json(_launch_request_body(args))
    with _issuer(args) as issuer:
        result = issuer.tokens.mint(request, caller="cli")
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


# parser ------------------------------------------------------------------------------------------


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, help="issuer config file (TOML)")
    return p


def _add_issuer_parser(commands: Any) -> None:
    issuer = commands.add_parser(
        "issuer",
        help="run and administer the OIDC issuer",
        description="Run and administer the OIDC issuer.",
    )
    issuer.set_defaults(func=_cmd_issuer_serve)
    issuer.add_argument("--config", help="issuer config file (TOML), for serving")
    _with_workers(issuer)
    sub = issuer.add_subparsers(dest="issuer_command", metavar="ACTION")
    p = _with_config(sub.add_parser("serve", help="serve the issuer (the default action)"))
    _with_workers(p, argparse.SUPPRESS)  # `issuer --workers 2 serve` keeps its 2
    p.set_defaults(func=_cmd_issuer_serve)
    p = _with_config(sub.add_parser("export-discovery", help="write discovery + JWKS files"))
    p.add_argument("directory", help="output directory (its .well-known/ goes to a public bucket)")
    p.set_defaults(func=_cmd_export_discovery)
    p = _with_config(sub.add_parser("rotate-key", help="activate a new signing key"))
    p.add_argument(
        "--stage",
        action="store_true",
        help="only publish the new key; the next rotate-key activates it",
    )
    p.set_defaults(func=_cmd_rotate_key)
    p = _with_config(sub.add_parser("status", help="users x providers identity table"))
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=_cmd_status)
    p = _with_config(
        sub.add_parser(
            "explain",
            help="which identities a launch would get per provider, and why",
            description="Which identities a launch for a user (in a workspace, of a pipeline) "
            "would get per provider, the ranked grants that give them, or why it gets none. "
            "Reads the policy and the issuer's state; needs no running issuer. Exit 1 when "
            "the issuer would refuse the launch.",
        )
    )
    p.add_argument("--user", required=True, help="the policy user who launches")
    p.add_argument("--workspace", help="the workspace the launch is in (default: none)")
    p.add_argument("--pipeline", help="the pipeline launched (default: none)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=_cmd_explain)
    p = sub.add_parser("new-api-key", help="generate a platform API key and its config digest")
    p.add_argument("--name", default="platform", help="name recorded in the audit trail")
    p.set_defaults(func=_cmd_new_api_key)
    p = _with_config(sub.add_parser("new-user-key", help="a member API key (HPC management)"))
    p.add_argument("--user", required=True, help="the policy user it authenticates")
    p.add_argument("--name", default="default", help="a label, e.g. the device")
    p.set_defaults(func=_cmd_new_user_key)
    p = _with_config(sub.add_parser("revoke-user-key", help="revoke member API keys"))
    p.add_argument("--user", required=True)
    p.add_argument("--name", help="only the key with this label (default: all of the user's)")
    p.set_defaults(func=_cmd_revoke_user_key)
    p = sub.add_parser("new-kek", help="write a key-encryption key for stored SSH keys")
    p.add_argument("path", help="file to create (mode 0600)")
    p.set_defaults(func=_cmd_new_kek)
    p = _with_config(sub.add_parser("revoke-run", help="revoke a run: later exchanges fail"))
    p.add_argument("run")
    p.add_argument("--reason")
    p.set_defaults(func=_cmd_revoke_run)
    p = _with_config(sub.add_parser("migrate", help="bring the database schema up to date"))
    p.set_defaults(func=_cmd_migrate)
    for name, disabled in (("disable-user", True), ("enable-user", False)):
        p = _with_config(sub.add_parser(name, help=f"{name.split('-')[0]} a user's launches"))
        p.add_argument("user")
        p.add_argument("--reason")
        p.set_defaults(func=_toggle_user(disabled))


def _add_token_parser(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="launch tokens from the command line",
        description="Launch tokens from the command line.",
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = _with_config(token_sub.add_parser("mint", help="mint a launch token locally"))
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


def add_issuer_parsers(commands: Any) -> None:
    """Adds `issuer` and `token` to the top-level subcommands."""
    _add_issuer_parser(commands)
    _add_token_parser(commands)


def serve_needs_config(args: argparse.Namespace) -> bool:
    """True for a bare `credsidecar issuer` (serve) given no --config."""
    return bool(args.func is _cmd_issuer_serve and not args.config)
