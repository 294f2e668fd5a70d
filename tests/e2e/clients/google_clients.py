"""Unmodified Google libraries in a job: google.auth.default(), google-cloud-storage, ID tokens.

Usage: python google_clients.py USER CERTS_URL  -> JSON: credential type, storage outcomes,
                                                   the ID token's verified claims
       python google_clients.py loop SECONDS    -> repeated reads; JSON counts of ok/errors
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import google.auth
import google.auth.transport.requests
import jwt
from google.api_core import exceptions
from google.cloud import storage
from google.oauth2 import id_token


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
        return "ok"
    except exceptions.Forbidden:
        return "Forbidden"
    except exceptions.GoogleAPICallError as exc:
        return f"{type(exc).__name__}: {exc}"[:200]


def checks(user: str, certs_url: str) -> dict[str, object]:
    credentials, project = google.auth.default()
    request = google.auth.transport.requests.Request()
    credentials.refresh(request)
    client = storage.Client()
    other = "bob" if user == "alice" else "alice"
    audience = "https://pipelines.example.org"
    token = id_token.fetch_id_token(request, audience)
    key = jwt.PyJWKClient(certs_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience)
    return {
        "credentials": type(credentials).__module__ + "." + type(credentials).__name__,
        "email": credentials.service_account_email,
        "project": project,
        "list_own": outcome(lambda: list(client.list_blobs(f"{user}-data"))),
        "write_own": outcome(
            lambda: client.bucket(f"{user}-data").blob("hello.txt").upload_from_string(b"hi")
        ),
        "read_shared": client.bucket("shared-refs")
        .blob("refs/genome.fa")
        .download_as_bytes()
        .decode()
        .splitlines()[0],
        "list_other": outcome(lambda: list(client.list_blobs(f"{other}-data"))),
        "write_shared": outcome(
            lambda: client.bucket("shared-refs").blob("x").upload_from_string(b"x")
        ),
        "id_token_email": claims.get("email"),
    }


def loop(seconds: float) -> dict[str, object]:
    client = storage.Client()
    ok, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.bucket("shared-refs").blob("refs/genome.fa").download_as_bytes()
            ok += 1
        except Exception as exc:  # any client-visible failure counts
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        time.sleep(0.2)
    return {"ok": ok, "errors": errors}


if __name__ == "__main__":
    if sys.argv[1] == "loop":
        print(json.dumps(loop(float(sys.argv[2]))))
    else:
        print(json.dumps(checks(sys.argv[1], sys.argv[2])))
