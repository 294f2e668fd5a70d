"""Azure clients of both App Service contracts, each printing the raw token it got.

Usage: python azure_legacy_clients.py newer
           -> JSON: the storage tokens of azure-identity's ManagedIdentityCredential and
              DefaultAzureCredential and of MSAL Python's ManagedIdentityClient, and the source
              MSAL detects (it picks the contract from the environment, as azure-identity does)
       python azure_legacy_clients.py msrestazure BLOB_URL CA_FILE USER
           -> JSON: msrestazure's MSIAuthentication token and, with its signed session, the
              status and blob names of listing USER's container and the other user's
              (run with the legacy environment's python: msrestazure, requests)
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

STORAGE = "https://storage.azure.com"


def newer() -> dict[str, Any]:
    import msal
    import requests
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    scope = f"{STORAGE}/.default"
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    result = client.acquire_token_for_client(resource=STORAGE)
    return {
        "managed_identity": ManagedIdentityCredential().get_token(scope).token,
        "default_credential": DefaultAzureCredential().get_token(scope).token,
        "msal": result.get("access_token") or result,
        "msal_source": source_name(msal.managed_identity),
    }


def source_name(module: Any) -> str:
    """MSAL's sources are sentinel objects: the name of the one it detects."""
    source = module.get_managed_identity_source()
    names = ("APP_SERVICE", "MACHINE_LEARNING", "SERVICE_FABRIC", "AZURE_ARC", "CLOUD_SHELL")
    return next((n for n in names if getattr(module, n, None) is source), repr(source))


def listing(session: Any, blob_url: str, container: str, ca_file: str) -> dict[str, Any]:
    resp = session.get(
        f"{blob_url}/{container}",
        params={"restype": "container", "comp": "list"},
        headers={"x-ms-version": "2021-08-06"},
        verify=ca_file,
        timeout=30,
    )
    return {"status": resp.status_code, "names": re.findall(r"<Name>([^<]*)</Name>", resp.text)}


def legacy(blob_url: str, ca_file: str, user: str) -> dict[str, Any]:
    from msrestazure.azure_active_directory import MSIAuthentication

    credentials = MSIAuthentication(resource=f"{STORAGE}/")
    session = credentials.signed_session()
    other = "bob" if user == "alice" else "alice"
    return {
        "token": credentials.token["access_token"],
        "expires_on": credentials.token["expires_on"],
        "list_own": listing(session, blob_url, f"{user}-data", ca_file),
        "list_other": listing(session, blob_url, f"{other}-data", ca_file),
    }


if __name__ == "__main__":
    if sys.argv[1] == "newer":
        print(json.dumps(newer()))
    else:
        print(json.dumps(legacy(*sys.argv[2:5])))
