"""Preflight of an HPC work directory (`ssh://CLUSTER/PATH`): `credsidecar hpc check` over the
launch's own SSH login, turned into a verdict.

It logs in exactly as `credsidecar hpc run` does (the issuer says how: a fresh certificate, or
the member's stored key signing inside the issuer), so it runs the same in the job and before
launch: both have the launch token. On the login node one read-only script runs: whether the
user may read / write the directory (`test -r/-w/-x`), then hpc/check.py's probe, judged by
hpc/check.py's `evaluate`:
- read: the directory exists and the user may list and enter it;
- write or delete (a work directory): also write permission, and the shared-group set-up
  `hpc check` verifies (group, setgid, default ACL, membership, the scheduler's commands).
Each failure is named in `Verdict.missing` ("write permission", "setgid", ...); the findings'
text and fix commands are the detail.
"""

from __future__ import annotations

import logging
import shlex

import aiohttp
import asyncssh

from credsidecar.errors import CredsidecarError, HpcApiError
from credsidecar.hpc.api import HpcApi
from credsidecar.hpc.check import Finding, evaluate, probe_script
from credsidecar.hpc.ssh import CONNECT_TIMEOUT, HpcSshError, connect
from credsidecar.launch import read_claims
from credsidecar.preflight.model import Access, Outcome, Target, Verdict

__all__ = ["check_hpc"]

# What a failed hpc/check.py finding means is missing. Like every `Verdict.missing`, the names
# leave out the resource: the report says "it lacks X and Y on DIR on cluster C".
_MISSING = {
    "group": "group ownership by the shared group",
    "setgid": "setgid",
    "default ACL": "a default ACL giving the group rwx",
    "membership": "membership of the shared group",
    "scheduler": "the scheduler's commands on the PATH",
}


def _access_script(directory: str) -> str:
    d = shlex.quote(directory)
    return (
        f'if [ -d {d} ]; then for p in r w x; do if [ -"$p" {d} ]; then echo "can=$p:yes"; '
        f'else echo "can=$p:no"; fi; done; fi\n'
    )


def _permissions(output: str) -> set[str]:
    granted = set()
    for line in output.splitlines():
        if line.startswith("can=") and line.endswith(":yes"):
            granted.add(line[4])
    return granted


def _explain(findings: list[Finding]) -> str:
    return "; ".join(f.detail + (f" (fix: {f.fix})" if f.fix else "") for f in findings)


async def check_hpc(
    target: Target,
    *,
    launch_token: str,
    session: aiohttp.ClientSession,
    issuer_url: str | None = None,
    group: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> Verdict:
    """Checks `target` (an HPC cluster and directory) as the launch's user.

    `launch_token` is the token the sidecar uses (in the job: `$CREDSIDECAR_TOKEN_FILE`'s;
    before launch: `--token-file`'s); the issuer is `issuer_url`, else the token's `iss`.
    `group` is the shared group a work directory must belong to (default: its own group).
    """
    # asyncssh logs each connection step at INFO, as for `credsidecar hpc` (hpc/commands.py).
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.root.level))
    cluster = target.location
    identity = f"user on cluster {cluster}"
    issuer = issuer_url or read_claims(launch_token).issuer
    if not issuer:
        return Verdict(target, Outcome.NO_CREDENTIALS, identity,
                       detail="the launch token names no issuer (iss)")  # fmt: skip
    api = HpcApi(issuer, session)
    try:
        described = await api.call(
            "POST", "/v1/hpc/launch-cluster", {"launch_token": launch_token, "cluster": cluster}
        )
        conn, connection = await connect(
            api, launch_token, cluster, described["mode"], connect_timeout
        )
    except HpcApiError as exc:
        outcome = {404: Outcome.NOT_FOUND, 400: Outcome.NO_CREDENTIALS,
                   401: Outcome.NO_CREDENTIALS, 403: Outcome.NO_CREDENTIALS}  # fmt: skip
        return Verdict(target, outcome.get(exc.status, Outcome.UNREACHABLE), identity,
                       detail=exc.message)  # fmt: skip
    except HpcSshError as exc:
        if isinstance(exc.__cause__, asyncssh.PermissionDenied):
            return Verdict(target, Outcome.DENIED, identity,
                           missing=(f"SSH login to {cluster}",), detail=exc.message)  # fmt: skip
        return Verdict(target, Outcome.UNREACHABLE, identity, detail=exc.message)
    except CredsidecarError as exc:  # the issuer itself not reachable
        return Verdict(target, Outcome.UNREACHABLE, identity, detail=exc.message)
    identity = f"{connection.username}@{cluster}"
    try:
        async with conn:
            directory = target.prefix
            if directory.startswith("~"):  # home-relative: as the login shell sees it
                done = await conn.run('printf %s "$HOME"', check=False)
                home = done.stdout if isinstance(done.stdout, str) else ""
                rest = directory[1:].lstrip("/")
                directory = f"{home}/{rest}" if rest else home
            script = _access_script(directory) + probe_script(directory, connection.scheduler)
            done = await conn.run(script, check=False)
    except (OSError, asyncssh.Error) as exc:
        return Verdict(target, Outcome.UNREACHABLE, identity,
                       detail=f"the session on {connection.where} failed: {exc}")  # fmt: skip
    output = done.stdout if isinstance(done.stdout, str) else ""
    return _verdict(target, identity, directory, output, group, connection.scheduler)


def _verdict(
    target: Target, identity: str, directory: str, output: str, group: str | None, scheduler: str
) -> Verdict:
    if "user=" not in output:  # the probe's first line missing: the shell failed, nothing known
        return Verdict(target, Outcome.UNREACHABLE, identity,
                       detail=f"the check script printed nothing on {identity}")  # fmt: skip
    findings = evaluate(output, directory, group, scheduler)
    missing_dir = [f for f in findings if f.name == "directory" and not f.ok]
    if missing_dir:
        return Verdict(target, Outcome.NOT_FOUND, identity, detail=_explain(missing_dir))
    can = _permissions(output)
    missing: list[str] = []
    failed: list[Finding] = []
    if Access.READ in target.access and not {"r", "x"} <= can:
        missing.append("read permission")
    writes = bool(target.access & {Access.WRITE, Access.DELETE})
    if writes and not {"w", "x"} <= can:
        missing.append("write permission")
    if writes:
        failed = [f for f in findings if not f.ok]
        missing += [_MISSING.get(f.name, f.name) for f in failed]
    if not missing:
        return Verdict(target, Outcome.OK, identity)
    detail = _explain(failed) or f"{identity} lacks {', '.join(missing)}"
    return Verdict(target, Outcome.DENIED, identity, missing=tuple(missing), detail=detail)
