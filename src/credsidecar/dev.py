"""`credsidecar dev`: the whole flow on one machine with no cloud account.

One process runs the issuer (example policy, temporary directory), the sandbox clouds (moto with
IAM enforcement behind a validating STS stand-in; Google STS, IAM and storage stand-ins; Entra
and Blob storage stand-ins over HTTPS with a local CA), two sandbox HPC login nodes registered
in the issuer (one trusting its SSH CA, one in stored-key mode holding the user's key sealed
in the issuer) and a sidecar for the chosen user. Once the sidecar is ready the job environment
is written to --env-file and a description of every piece to --info-file; it then runs until
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from credsidecar.config import SidecarConfig
from credsidecar.daemon import run_sidecar
from credsidecar.issuer.config import IssuerConfig, load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.runner import open_service, serve
from credsidecar.issuer.service import LaunchRequest
from credsidecar.jobenv import write_private_atomic
from credsidecar.listen import bind_loopback, port_of
from credsidecar.sandbox.hpc.runner import CERTIFICATE_CLUSTER, STORED_KEY_CLUSTER, HpcSandbox
from credsidecar.sandbox.runner import Sandbox, start_sandbox

__all__ = ["register_sandbox_clusters", "run_dev", "run_sandbox"]


def _mint(config: IssuerConfig, user: str, run: str) -> tuple[str, dict[str, list[str]]]:
    with open_service(config) as service:
        minted = service.tokens.mint(LaunchRequest(user=user, run=run, workspace="genomics"), "dev")
    return minted.token, dict(minted.identities)


async def _start_issuer(
    workdir: Path, stop: asyncio.Event
) -> tuple[IssuerConfig, str, asyncio.Task[None]]:
    # The issuer's URL names its port, so the port is bound before the config is written and
    # the bound socket is handed to the issuer (never closed in between, so never taken).
    sock = bind_loopback()
    try:
        config_path, api_key = write_example(workdir, port_of(sock), stored_keys=True)
        config = load_config(config_path)
        write_private_atomic(workdir / "platform-api-key", api_key)
    except BaseException:
        sock.close()
        raise
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, ready=ready, stop=stop, sock=sock))
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait([task, ready_wait], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready_wait.cancel()
        sock.close()  # the issuer never listened on it
        await task  # raises the start-up error
    return config, api_key, task


OWNER = "carol"  # the example policy's owner: she registers the sandbox clusters


def _member_keys(config: IssuerConfig, users: tuple[str, ...]) -> dict[str, str]:
    with open_service(config) as service:
        return {user: service.hpc.new_member_key(user, "dev") for user in users}


async def register_sandbox_clusters(
    config: IssuerConfig, hpc: HpcSandbox, user: str, workdir: Path
) -> Path:
    """Registers the sandbox login nodes as an owner would, through the issuer's HPC API, and
    stores the user's key for the stored-key cluster as the member would (sealed in the issuer;
    the sandbox's copy is then dropped). Returns the directory of the member API keys."""
    import aiohttp

    from credsidecar.hpc.api import HpcApi

    keys = await asyncio.to_thread(_member_keys, config, tuple(dict.fromkeys((OWNER, user))))
    key_dir = workdir / "member-keys"
    for who, key in keys.items():
        await asyncio.to_thread(write_private_atomic, key_dir / who, key + "\n")
    async with aiohttp.ClientSession() as session:
        owner = HpcApi(config.issuer_url, session, keys[OWNER])
        for body in hpc.registrations():
            await owner.call("POST", "/v1/hpc/clusters", body)
        private_key = hpc.member_keys[user].export_private_key().decode()
        await HpcApi(config.issuer_url, session, keys[user]).call(
            "PUT",
            f"/v1/hpc/clusters/{STORED_KEY_CLUSTER}/credential",
            {"username": user, "private_key": private_key},
        )
    hpc.member_keys.clear()  # from here on only the issuer holds it
    return key_dir


def _hpc_instructions(info: dict[str, Any]) -> str:
    user, hpc = info["user"], info["sandbox"]["hpc"]
    cs = "credsidecar"
    if shutil.which(cs) is None:
        cs = shlex.quote(str(Path(sys.executable).parent / "credsidecar"))
    token, workdir = shlex.quote(info["launch_token_file"]), Path(info["workdir"])
    cert_dir = shlex.quote(str(workdir / "ssh"))
    owner_key = shlex.quote(str(Path(info["member_keys"]) / OWNER))
    nodes = hpc["clusters"]
    where = ", ".join(f"{n} 127.0.0.1:{c['port']} ({c['mode']})" for n, c in nodes.items())
    return f"""
HPC: sandbox login nodes {where},
running commands as {hpc["runs_as"]} with Slurm stand-ins; logins logged in {hpc["login_log"]}
  export CREDSIDECAR_TOKEN_FILE={token}
  {cs} hpc run --cluster {CERTIFICATE_CLUSTER} -- hostname      # a 15-min certificate for {user}
  {cs} hpc cert --cluster {CERTIFICATE_CLUSTER} --out {cert_dir}
  ssh -F {cert_dir}/ssh_config {CERTIFICATE_CLUSTER} hostname              # plain OpenSSH
  {cs} hpc check --cluster {CERTIFICATE_CLUSTER} --work-dir {hpc["work_dir"]}
  {cs} hpc run --cluster {STORED_KEY_CLUSTER} -- hostname       # {user}'s key, sealed in the issuer
  {cs} preflight --token-file {token} --work-dir ssh://{CERTIFICATE_CLUSTER}{hpc["work_dir"]}
  CREDSIDECAR_MEMBER_KEY=$(cat {owner_key}) {cs} hpc status --issuer-url {info["issuer_url"]}
"""


def _instructions(info: dict[str, Any], env_file: Path) -> str:
    user = info["user"]
    other = "bob" if user == "alice" else "alice"
    source = f"set -a; . {shlex.quote(str(env_file))}; set +a"
    blob_url = info["sandbox"]["azure"]["blob_url"]
    # The sandbox extra installs the aws CLI beside this Python; make sure the shell finds it.
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("aws") is None and (Path(bin_dir) / "aws").exists():
        source += f"; export PATH={shlex.quote(bin_dir)}:$PATH"
    return f"""
credsidecar dev is running for {user} (run {info["run"]}); Ctrl-C stops everything.

  issuer   {info["issuer_url"]}
  sidecar  {info["sidecar_url"]}
  sandbox  S3/IAM (moto, IAM enforced) {info["sandbox"]["aws"]["endpoint_url"]}
           STS stand-in {info["sandbox"]["aws"]["sts_endpoint"]}
           GCP STS {info["sandbox"]["gcp"]["sts_url"]}, IAM {info["sandbox"]["gcp"]["iam_url"]},
           storage {info["sandbox"]["gcp"]["storage_url"]}
           Entra {info["sandbox"]["azure"]["authority_url"]}, Blob {blob_url} (HTTPS, local CA)

Try it in another shell, with unmodified tools:
  {source}
  aws sts get-caller-identity                 # {user}'s role session
  aws s3 ls s3://{user}-data/                  # allowed
  aws s3 cp s3://shared-refs/refs/genome.fa -  # allowed, read-only
  aws s3 ls s3://{other}-data/                  # AccessDenied
  echo hi | aws s3 cp - s3://shared-refs/x     # AccessDenied
  {shlex.quote(sys.executable)} -c 'from google.cloud import storage; c = storage.Client()
print([b.name for b in c.list_blobs("{user}-data")])   # allowed
print(list(c.list_blobs("{other}-data")))'              # 403 Forbidden
  {shlex.quote(sys.executable)} -c 'from azure.identity import DefaultAzureCredential as D
from azure.storage.blob import BlobServiceClient as B; s = B("{blob_url}", credential=D())
print([b.name for b in s.get_container_client("{user}-data").list_blobs()])  # allowed
list(s.get_container_client("{other}-data").list_blobs())'    # AuthorizationPermissionMismatch
{_hpc_instructions(info)}
Job environment: {env_file}   Everything else: {info["workdir"]}
"""


async def run_dev(args: argparse.Namespace) -> int:
    # asyncssh logs each step of each login at INFO; the login nodes' own log says who logged in.
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.root.level))
    with tempfile.TemporaryDirectory(prefix="credsidecar-dev-") as tmp:
        workdir = Path(tmp)
        stop = asyncio.Event()
        config, _, issuer_task = await _start_issuer(workdir, stop)
        sandbox: Sandbox | None = None
        try:
            sandbox = await start_sandbox(config.issuer_url, workdir / "sandbox")
            member_keys = await register_sandbox_clusters(config, sandbox.hpc, args.user, workdir)
            run_id = f"dev-{uuid.uuid4().hex[:8]}"
            token, identities = await asyncio.to_thread(_mint, config, args.user, run_id)
            token_file = workdir / "launch-token"
            write_private_atomic(token_file, token)
            env_file = Path(args.env_file) if args.env_file else workdir / "job.env"
            if not env_file.is_absolute():
                env_file = Path.cwd() / env_file
            sidecar_config = SidecarConfig(
                token_file=token_file,
                aws_sts_endpoint=sandbox.aws.sts_url,
                gcp_sts_url=sandbox.gcp.sts_url,
                gcp_iam_url=sandbox.gcp.iam_url,
                job_env=sandbox.job_env(),
                clouds=frozenset({"aws", "gcp", "azure"}),
                azure_authority=sandbox.azure.authority_url,
                azure_node_imds_url=sandbox.azure.node_imds_url,
                gcp_node_metadata_url=sandbox.gcp.node_metadata_url,
                aws_node_imds_url=sandbox.aws.node_imds_url,
                ca_file=Path(sandbox.azure.ca_file),
                aws_endpoint_url=sandbox.aws.moto.url,
                aws_duration=args.aws_duration,
                run_dir=workdir / "run",
                env_file=env_file,
                audit_log=str(workdir / "sidecar-audit.jsonl"),
                ready_timeout=30,
            )
            started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            sidecar_task: asyncio.Future[int] = asyncio.create_task(
                run_sidecar(sidecar_config, stop, started)
            )
            await asyncio.wait([sidecar_task, started], return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                await sidecar_task  # raises why the sidecar could not start
                return 1
            info = {
                "issuer_url": config.issuer_url,
                "sidecar_url": started.result().url,
                "workdir": str(workdir),
                "env_file": str(env_file),
                "launch_token_file": str(token_file),
                "platform_api_key_file": str(workdir / "platform-api-key"),
                "member_keys": str(member_keys),
                "issuer_config": str(workdir / "issuer.toml"),
                "issuer_audit_log": config.audit_log,
                "sidecar_audit_log": sidecar_config.audit_log,
                "user": args.user,
                "run": run_id,
                "identities": identities,
                "sandbox": sandbox.describe(),
            }
            if args.info_file:
                text = json.dumps(info, indent=2) + "\n"
                await asyncio.to_thread(write_private_atomic, Path(args.info_file), text)
            print(_instructions(info, env_file), flush=True)
            await sidecar_task
        finally:
            stop.set()
            await issuer_task
            if sandbox is not None:
                await sandbox.stop()
    return 0


async def run_sandbox(args: argparse.Namespace) -> int:
    """`credsidecar sandbox`: only the sandbox clouds, for an issuer running elsewhere."""
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.root.level))
    with tempfile.TemporaryDirectory(prefix="credsidecar-sandbox-") as tmp:
        sandbox = await start_sandbox(
            args.issuer_url, Path(tmp), args.aws_audience, args.azure_token_lifetime
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            description = sandbox.describe()
            text = json.dumps(description, indent=2) + "\n"
            if args.info_file:
                await asyncio.to_thread(write_private_atomic, Path(args.info_file), text)
            print(text, flush=True)
            await stop.wait()
        finally:
            await sandbox.stop()
    return 0
