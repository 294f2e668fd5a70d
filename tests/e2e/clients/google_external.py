"""Unmodified google-auth and google-cloud-storage reading an external-account credential file
(`credsidecar serve --secret-only`): the libraries call the STS and IAM stand-ins themselves.

Usage: python google_external.py USER  -> JSON: credential type, email, storage outcomes
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import google.auth
import google.auth.transport.requests
from google.api_core import exceptions
from google.cloud import storage

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
        return "ok"
    except exceptions.Forbidden:
        return "Forbidden"
    except exceptions.GoogleAPICallError as exc:
        return f"{type(exc).__name__}: {exc}"[:200]


def checks(user: str) -> dict[str, object]:
    # Scopes as every library passes them: IAM's generateAccessToken refuses an empty list.
    credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM])
    credentials.refresh(google.auth.transport.requests.Request())
    client = storage.Client()
    other = "bob" if user == "alice" else "alice"
    return {
        "credentials": type(credentials).__module__ + "." + type(credentials).__name__,
        "email": credentials.service_account_email,
        "project": project,
        "list_own": outcome(lambda: list(client.list_blobs(f"{user}-data"))),
        "list_other": outcome(lambda: list(client.list_blobs(f"{other}-data"))),
    }


if __name__ == "__main__":
    print(json.dumps(checks(sys.argv[1])))
