"""Unmodified azure-identity and azure-storage-blob in a job asking for the node's managed
identities by client id, as a job on a VM or Batch node would.

Usage: python azure_node_clients.py BLOB_URL CLIENT_ID [OTHER_CLIENT_ID]
    -> JSON: ManagedIdentityCredential(client_id=CLIENT_ID)'s storage token, its listing of
       alice-data and bob-data (names, or the storage error code), and for OTHER_CLIENT_ID the
       credential's error; plus ManagedIdentityCredential()'s token (the launch's default).
"""

from __future__ import annotations

import json
import sys

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient

STORAGE = "https://storage.azure.com/.default"


def listing(service: BlobServiceClient, container: str) -> object:
    try:
        return [b.name for b in service.get_container_client(container).list_blobs()]
    except HttpResponseError as exc:
        return str(exc.error_code or exc.status_code)


def main(blob_url: str, client_id: str, other: str | None) -> dict[str, object]:
    credential = ManagedIdentityCredential(client_id=client_id)
    service = BlobServiceClient(blob_url, credential=credential)
    result: dict[str, object] = {
        "token": credential.get_token(STORAGE).token,
        "list_alice": listing(service, "alice-data"),
        "list_bob": listing(service, "bob-data"),
        "default_token": ManagedIdentityCredential().get_token(STORAGE).token,
    }
    if other:
        try:
            ManagedIdentityCredential(client_id=other).get_token(STORAGE)
            result["other"] = "granted"
        except ClientAuthenticationError as exc:
            result["other"] = str(exc)[:600]
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
