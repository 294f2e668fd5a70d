"""`credsidecar dev`: the whole flow on one machine with no cloud account.

For now this runs the issuer on a temporary directory with the example policy and mints a launch
token for the chosen user; the sandbox clouds and the sidecar join it as they land.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import uuid
from pathlib import Path

from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import free_port, write_example
from credsidecar.issuer.runner import open_service, serve
from credsidecar.issuer.service import LaunchRequest

__all__ = ["run_dev"]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


async def run_dev(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="credsidecar-dev-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        config_path, api_key = write_example(workdir, port)
        config = load_config(config_path)
        _write_private(workdir / "platform-api-key", api_key)
        run_id = f"dev-{uuid.uuid4().hex[:8]}"
        with open_service(config) as service:
            minted = service.mint(
                LaunchRequest(user=args.user, run=run_id, workspace="genomics"), caller="dev"
            )
        token_file = workdir / "launch-token"
        _write_private(token_file, minted.token)

        ready, stop = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve(config, ready=ready, stop=stop))
        await ready.wait()
        # serve() installed SIGINT/SIGTERM handlers that set `stop`.
        url = config.issuer_url
        info = {
            "issuer_url": url,
            "workdir": str(workdir),
            "issuer_config": str(config_path),
            "policy": str(config.policy_path),
            "audit_log": config.audit_log,
            "platform_api_key_file": str(workdir / "platform-api-key"),
            "launch_token_file": str(token_file),
            "user": args.user,
            "run": run_id,
            "identities": minted.identities,
        }
        if args.info_file:
            info_text = json.dumps(info, indent=2) + "\n"
            await asyncio.to_thread(Path(args.info_file).write_text, info_text, encoding="utf-8")
        print(
            f"""
credsidecar dev: issuer running at {url}  (Ctrl-C to stop; everything lives in {workdir})

  Discovery:   curl -s {url}/.well-known/openid-configuration
  JWKS:        curl -s {url}/.well-known/jwks.json
  Identities:  credsidecar issuer status --config {config_path}

  A launch token for {args.user} (run {run_id}) is in {token_file}.
  Exchange it for an AWS-audience token, as the sidecar will:
    curl -s {url}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
      -d subject_token_type=urn:ietf:params:oauth:token-type:jwt -d audience=sts.amazonaws.com \\
      --data-urlencode subject_token@{token_file}
  Revoke the run, then exchange again to see the refusal:
    curl -s -X POST {url}/v1/runs/{run_id}/revoke \\
      -H "Authorization: Bearer $(cat {workdir / "platform-api-key"})"
""",
            flush=True,
        )
        await server
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return 0
