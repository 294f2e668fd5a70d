"""`credsidecar hpc ...`: the command line for HPC identities.

For a launch (the launch token from --token-file, --token-env or $CREDSIDECAR_TOKEN_FILE; the
issuer from the token's `iss` unless --issuer-url):
    hpc run --cluster NAME -- COMMAND...      run a command on the login node as the user
    hpc check --cluster NAME --work-dir DIR   preflight the shared work directory over SSH
    hpc cert --cluster NAME --out DIR         a fresh key + certificate for plain OpenSSH
For owners and members (a member API key from --member-key-file or $CREDSIDECAR_MEMBER_KEY):
    hpc cluster list|show|add|edit|delete     clusters (owners change them)
    hpc credential show|set|delete            your own stored key (stored-key mode)
    hpc status                                members x clusters: missing/added/certificate
Anyone:
    hpc ca-public-key                         the line for sshd's TrustedUserCAKeys
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

__all__ = ["add_hpc_parser"]

# This module only builds the parser (`credsidecar --help` loads it); the handlers, which need
# aiohttp and asyncssh, are in commands.py and imported when a command runs.


def _dispatch(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from credsidecar.hpc.commands import execute

        return execute(name, args)

    return run


def add_hpc_parser(commands: Any) -> None:
    hpc = commands.add_parser(
        "hpc",
        help="per-user SSH to HPC clusters (certificates or stored keys)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = hpc.add_subparsers(dest="hpc_command", metavar="ACTION", required=True)
    env_issuer = os.environ.get("CREDSIDECAR_ISSUER_URL")

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--issuer-url",
            default=env_issuer,
            help="the issuer (default: the launch token's iss, or $CREDSIDECAR_ISSUER_URL)",
        )
        return p

    def launch(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        common(p)
        p.add_argument("--cluster", required=True, help="cluster name at the issuer")
        p.add_argument(
            "--connect-timeout",
            type=float,
            default=20.0,
            metavar="SECONDS",
            help="give up connecting to the login node after this long (default 20)",
        )
        src = p.add_mutually_exclusive_group()
        src.add_argument("--token-file", help="launch token file (default $CREDSIDECAR_TOKEN_FILE)")
        src.add_argument(
            "--token-env", metavar="VARIABLE", help="variable holding the launch token"
        )
        return p

    def member(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        common(p)
        p.add_argument(
            "--member-key-file", help="your member API key (default $CREDSIDECAR_MEMBER_KEY)"
        )
        return p

    p = launch(sub.add_parser("run", help="run a command on the login node as the user"))
    p.add_argument("remote", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(func=_dispatch("run"))
    p = launch(sub.add_parser("check", help="preflight a shared work directory over SSH"))
    p.add_argument("--work-dir", required=True, help="the pipeline's work directory")
    p.add_argument("--group", help="the shared group (default: the directory's group)")
    p.set_defaults(func=_dispatch("check"))
    p = launch(sub.add_parser("cert", help="write a key + certificate for plain OpenSSH"))
    p.add_argument(
        "--out",
        required=True,
        help="directory for the key, certificate, known_hosts and ssh_config (created 0700)",
    )
    p.set_defaults(func=_dispatch("cert"))

    p = sub.add_parser("cluster", help="list, show, add, edit or delete clusters")
    csub = p.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    member(csub.add_parser("list", help="every cluster")).set_defaults(func=_dispatch("cluster"))
    for action in ("show", "add", "edit", "delete"):
        cp = member(
            csub.add_parser(
                action, help=f"{action} a cluster" + (" (owners)" if action != "show" else "")
            )
        )
        cp.add_argument("name")
        if action in ("add", "edit"):
            cp.add_argument("--host", help="the login node")
            cp.add_argument("--port", type=int, help="SSH port (default 22)")
            cp.add_argument("--scheduler", help="slurm, lsf, pbs, sge, moab, ...")
            cp.add_argument("--mode", choices=("certificate", "stored-key"))
            cp.add_argument(
                "--host-ca-key",
                metavar="FILE",
                help="the public key that signs the cluster's host certificates",
            )
            cp.add_argument(
                "--host-key",
                action="append",
                metavar="FILE",
                help="a pinned host public key (repeat for several)",
            )
            cp.add_argument(
                "--username",
                action="append",
                metavar="MEMBER=LINUXNAME",
                help="certificate mode: a member's Linux username (repeat)",
            )
            if action == "edit":
                cp.add_argument(
                    "--keep-usernames",
                    action="store_true",
                    help="add --username entries to the existing ones",
                )
        cp.set_defaults(func=_dispatch("cluster"))

    p = sub.add_parser("credential", help="your stored key for a stored-key cluster")
    ksub = p.add_subparsers(dest="credential_action", metavar="ACTION", required=True)
    for action in ("show", "set", "delete"):
        kp = member(ksub.add_parser(action, help=f"{action} your stored credential"))
        kp.add_argument("--cluster", required=True)
        if action == "set":
            kp.add_argument("--username", required=True, help="your Linux username there")
            kp.add_argument("--private-key", required=True, metavar="FILE")
            kp.add_argument(
                "--passphrase-env",
                metavar="VARIABLE",
                help="variable holding the key's passphrase (never an argument)",
            )
        kp.set_defaults(func=_dispatch("credential"))

    p = member(sub.add_parser("status", help="members x clusters: missing, added, certificate"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_dispatch("status"))

    p = common(sub.add_parser("ca-public-key", help="the CA line for TrustedUserCAKeys"))
    p.add_argument("--config", help="read it from the issuer's state instead of its API")
    p.set_defaults(func=_dispatch("ca-public-key"))
