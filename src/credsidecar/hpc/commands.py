"""What `credsidecar hpc ...` does (cli.py builds the parser): each handler parses its arguments,
makes its call to the issuer's HPC API (hpc/api.py) or opens the SSH session (hpc/ssh.py), and
prints. This module is imported only when an `hpc` command runs, so it may load aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from credsidecar.errors import ConfigError

__all__ = ["COMMANDS", "execute"]

Command = Callable[[argparse.Namespace, aiohttp.ClientSession], Awaitable[int]]


def _member_key(args: argparse.Namespace) -> str:
    if args.member_key_file:
        try:
            return Path(args.member_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--member-key-file {args.member_key_file}: {exc.strerror}") from exc
    key = os.environ.get("CREDSIDECAR_MEMBER_KEY")
    if not key:
        raise ConfigError(
            "this command needs your member API key: --member-key-file FILE or "
            "$CREDSIDECAR_MEMBER_KEY (an owner or admin creates it with "
            "`credsidecar issuer new-user-key --user YOU`)"
        )
    return key


def _issuer_url(args: argparse.Namespace, token: str | None = None) -> str:
    if args.issuer_url:
        return str(args.issuer_url)
    if token:
        from credsidecar.launch.claims import read_claims

        issuer = read_claims(token).issuer
        if issuer:
            return issuer
    raise ConfigError("give --issuer-url (or $CREDSIDECAR_ISSUER_URL)")


def _launch_token(args: argparse.Namespace) -> str:
    if args.token_env:
        value = os.environ.get(args.token_env, "").strip()
        if not value:
            raise ConfigError(f"${args.token_env} is empty or unset")
        return value
    path = args.token_file or os.environ.get("CREDSIDECAR_TOKEN_FILE")
    if not path:
        raise ConfigError(
            "give the launch token: --token-file FILE, --token-env VAR or $CREDSIDECAR_TOKEN_FILE"
        )
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"launch token file {path}: {exc.strerror}") from exc


# launches ----------------------------------------------------------------------------------------


async def _connect(args: argparse.Namespace, session: aiohttp.ClientSession) -> Any:
    from credsidecar.hpc.api import HpcApi
    from credsidecar.hpc.ssh import connect

    token = _launch_token(args)
    api = HpcApi(_issuer_url(args, token), session)
    described = await api.call(
        "POST", "/v1/hpc/launch-cluster", {"launch_token": token, "cluster": args.cluster}
    )
    return await connect(api, token, args.cluster, described["mode"], args.connect_timeout)


async def _run(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    from credsidecar.hpc.ssh import run_command

    # argparse keeps the `--` that ends our options; the command's own `--` stay.
    command = args.remote[1:] if args.remote[:1] == ["--"] else args.remote
    if not command:
        raise ConfigError("give the command to run after --, e.g. `-- sbatch head.sh`")
    conn, _ = await _connect(args, session)
    async with conn:
        return await run_command(conn, command)


async def _check(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    from credsidecar.hpc.check import evaluate, probe_script

    conn, connection = await _connect(args, session)
    async with conn:
        done = await conn.run(probe_script(args.work_dir, connection.scheduler), check=False)
    output = done.stdout if isinstance(done.stdout, str) else ""
    findings = evaluate(output, args.work_dir, args.group, connection.scheduler)
    failed = [f for f in findings if not f.ok]
    print(f"{connection.where}: {args.work_dir}")
    for finding in findings:
        print(f"  {'ok  ' if finding.ok else 'FAIL'}  {finding.name}: {finding.detail}")
        if finding.fix:
            print(f"        fix: {finding.fix}")
        if finding.advice:
            print(f"        how: {finding.advice}")
    print(f"{len(findings) - len(failed)} of {len(findings)} checks passed")
    return 1 if failed else 0


def _write_cert_files(out: Path, key: Any, issued: dict[str, Any]) -> Path:
    """Key, certificate, known_hosts and an ssh_config that uses only them."""
    from credsidecar.private_files import ensure_private_dir, write_private_atomic

    # The private key goes in here: a directory someone else planted or can read is refused.
    ensure_private_dir(out, what="certificate directory")
    identity, cert, known = out / "id_ed25519", out / "id_ed25519-cert.pub", out / "known_hosts"
    write_private_atomic(identity, key.export_private_key().decode())
    write_private_atomic(out / "id_ed25519.pub", key.export_public_key().decode())
    write_private_atomic(cert, issued["certificate"] + "\n")
    write_private_atomic(known, issued["known_hosts"])
    alias = issued["cluster"]
    config = out / "ssh_config"
    write_private_atomic(
        config,
        "\n".join(
            [
                f"Host {alias}",
                f"    HostName {issued['host']}",
                f"    Port {issued['port']}",
                f"    User {issued['username']}",
                f"    IdentityFile {identity}",
                f"    CertificateFile {cert}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {known}",
                "    StrictHostKeyChecking yes",
                "    GlobalKnownHostsFile /dev/null",
                "",
            ]
        ),
    )
    return config


async def _cert(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    import asyncssh

    from credsidecar.hpc.api import HpcApi

    token = _launch_token(args)
    api = HpcApi(_issuer_url(args, token), session)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"credsidecar {args.cluster}")
    issued = await api.call(
        "POST",
        "/v1/ssh/certificates",
        {
            "launch_token": token,
            "cluster": args.cluster,
            "public_key": key.export_public_key().decode(),
        },
    )
    config = await asyncio.to_thread(_write_cert_files, Path(args.out), key, issued)
    alias = issued["cluster"]
    print(
        f"certificate {issued['key_id']} for {issued['username']}@{issued['host']}:"
        f"{issued['port']}, valid until {issued['valid_before']} (epoch seconds)"
    )
    print(f"ssh -F {shlex.quote(str(config))} {alias} hostname")
    return 0


# management --------------------------------------------------------------------------------------


async def _api(args: argparse.Namespace, session: aiohttp.ClientSession) -> Any:
    from credsidecar.hpc.api import HpcApi

    return HpcApi(_issuer_url(args), session, _member_key(args))


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _read_keys(paths: list[str] | None) -> list[str] | None:
    if paths is None:
        return None
    keys = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    return keys


def _cluster_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key in ("scheduler", "host", "port", "mode"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.host_ca_key is not None:
        ca = _read_keys([args.host_ca_key]) or []
        body["host_ca_key"] = ca[0] if ca else None
    host_keys = _read_keys(args.host_key)
    if host_keys is not None:
        body["host_keys"] = host_keys
    if args.username:
        pairs = [item.split("=", 1) for item in args.username]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError("--username takes MEMBER=LINUXNAME")
        body["usernames"] = dict(pairs)
    return body


async def _cluster(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    api = await _api(args, session)
    action = args.cluster_action
    if action == "list":
        data = await api.call("GET", "/v1/hpc/clusters")
        for c in data["clusters"]:
            print(f"{c['name']:<20} {c['mode']:<12} {c['scheduler']:<8} {c['host']}:{c['port']}")
        return 0
    if action == "show":
        _print(await api.call("GET", f"/v1/hpc/clusters/{args.name}"))
    elif action == "add":
        _print(
            await api.call("POST", "/v1/hpc/clusters", {"name": args.name, **_cluster_body(args)})
        )
    elif action == "edit":
        body = _cluster_body(args)
        if args.username and args.keep_usernames:
            current = await api.call("GET", f"/v1/hpc/clusters/{args.name}")
            body["usernames"] = {**current["usernames"], **body["usernames"]}
        _print(await api.call("PATCH", f"/v1/hpc/clusters/{args.name}", body))
    elif action == "delete":
        await api.call("DELETE", f"/v1/hpc/clusters/{args.name}")
        print(f"cluster {args.name} deleted (with its members' stored credentials)")
    return 0


async def _credential(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    api = await _api(args, session)
    path = f"/v1/hpc/clusters/{args.cluster}/credential"
    if args.credential_action == "show":
        _print(await api.call("GET", path))
    elif args.credential_action == "set":
        try:
            private_key = await asyncio.to_thread(Path(args.private_key).read_text)
        except OSError as exc:
            raise ConfigError(f"--private-key {args.private_key}: {exc.strerror}") from exc
        passphrase = os.environ.get(args.passphrase_env) if args.passphrase_env else None
        if args.passphrase_env and passphrase is None:
            raise ConfigError(f"${args.passphrase_env} is not set")
        body = {"username": args.username, "private_key": private_key, "passphrase": passphrase}
        _print(await api.call("PUT", path, body))
    else:
        await api.call("DELETE", path)
        print(f"your stored credential for {args.cluster} is deleted")
    return 0


async def _status(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    api = await _api(args, session)
    rows = (await api.call("GET", "/v1/hpc/status"))["members"]
    if args.json:
        _print(rows)
        return 0
    from credsidecar.issuer.status import hpc_status_table

    print(hpc_status_table(rows))
    return 0


async def _ca_public_key(args: argparse.Namespace, session: aiohttp.ClientSession) -> int:
    if args.config:
        from credsidecar.issuer.config import load_config
        from credsidecar.issuer.ssh_ca import configured_ca_public_key

        config = load_config(Path(args.config))
        print(configured_ca_public_key(config))  # from the shared store with PostgreSQL
        return 0
    from credsidecar.hpc.api import HpcApi

    sys.stdout.write(await HpcApi(_issuer_url(args), session).text("/v1/ssh/ca.pub"))
    return 0


COMMANDS: dict[str, Command] = {
    "run": _run,
    "check": _check,
    "cert": _cert,
    "cluster": _cluster,
    "credential": _credential,
    "status": _status,
    "ca-public-key": _ca_public_key,
}


def execute(name: str, args: argparse.Namespace) -> int:
    """Runs the `hpc` command `name` with one HTTP session for its calls to the issuer."""
    # asyncssh logs each connection step at INFO; a remote command's stderr stays its own.
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.root.level))

    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            return await COMMANDS[name](args, session)

    return asyncio.run(main())
