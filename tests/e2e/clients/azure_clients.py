"""Unmodified Azure libraries in a job: azure-identity's credentials and azure-storage-blob.

Usage: python azure_clients.py USER BLOB_URL KEYS_URL [CLIENT_ID...]
           -> JSON: the verified claims of ManagedIdentityCredential's and DefaultAzureCredential's
              tokens, storage outcomes through DefaultAzureCredential, and for each CLIENT_ID
              the claims of ManagedIdentityCredential(client_id=...)'s token or its error
       python azure_clients.py loop BLOB_URL SECONDS -> repeated reads; JSON counts of ok/errors

The account URL is the only thing the job is told besides `credsidecar env`: no variable sets
it for a token credential.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient

STORAGE = "https://storage.azure.com/.default"


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
        return "ok"
    except HttpResponseError as exc:
        return str(exc.error_code or exc.status_code)


def claims(credential: TokenCredential, keys_url: str) -> dict[str, Any]:
    token = credential.get_token(STORAGE).token
    key = jwt.PyJWKClient(keys_url).get_signing_key_from_jwt(token)
    verified = jwt.decode(
        token, key.key, algorithms=["RS256"], audience="https://storage.azure.com"
    )
    return {k: verified[k] for k in ("oid", "appid", "tid", "aud")}


def selected(client_id: str, keys_url: str) -> dict[str, Any]:
    try:
        return claims(ManagedIdentityCredential(client_id=client_id), keys_url)
    except ClientAuthenticationError as exc:
        return {"error": str(exc)}


def checks(user: str, blob_url: str, keys_url: str, client_ids: list[str]) -> dict[str, object]:
    default = DefaultAzureCredential()
    service = BlobServiceClient(blob_url, credential=default)
    mine = service.get_container_client(f"{user}-data")
    refs = service.get_container_client("shared-refs")
    other = "bob" if user == "alice" else "alice"
    return {
        "managed_identity": claims(ManagedIdentityCredential(), keys_url),
        "default_credential": claims(default, keys_url),
        "write_own": outcome(lambda: mine.upload_blob("hello.txt", b"hi", overwrite=True)),
        "list_own": [b.name for b in mine.list_blobs()],
        "read_shared": refs.download_blob("refs/genome.fa").readall().decode().splitlines()[0],
        "list_other": outcome(
            lambda: list(service.get_container_client(f"{other}-data").list_blobs())
        ),
        "write_shared": outcome(lambda: refs.upload_blob("x.txt", b"x")),
        "selected": {client_id: selected(client_id, keys_url) for client_id in client_ids},
    }


def loop(blob_url: str, seconds: float) -> dict[str, object]:
    refs = BlobServiceClient(blob_url, credential=ManagedIdentityCredential())
    container = refs.get_container_client("shared-refs")
    ok, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            container.download_blob("refs/genome.fa").readall()
            ok += 1
        except Exception as exc:  # any client-visible failure counts
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        time.sleep(0.2)
    return {"ok": ok, "errors": errors}


if __name__ == "__main__":
    if sys.argv[1] == "loop":
        print(json.dumps(loop(sys.argv[2], float(sys.argv[3]))))
    else:
        print(json.dumps(checks(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])))
