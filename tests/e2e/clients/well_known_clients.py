"""Unmodified SDKs finding credentials on the well-known metadata addresses by themselves: no
credsidecar variable, no metadata host, no region is given; only the sandbox's storage address
(which no variable of credsidecar's carries) is passed in.

Usage: python well_known_clients.py aws USER S3_URL        -> JSON: caller, provider, region, ...
       python well_known_clients.py gcp USER               -> JSON: credential type, project, ...
       python well_known_clients.py azure USER BLOB_URL    -> JSON: token claims, storage outcomes
(GCP's storage address comes in API_ENDPOINT_OVERRIDE; Azure's CA in REQUESTS_CA_BUNDLE.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

STORAGE = "https://storage.azure.com/.default"


def aws(user: str, s3_url: str) -> dict[str, object]:
    import boto3
    from botocore.exceptions import ClientError
    from botocore.utils import IMDSRegionProvider

    def outcome(call: Callable[[], object]) -> str:
        try:
            call()
            return "ok"
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])

    session = boto3.Session()
    # botocore reads the region from IMDS only for defaults_mode "auto" (the aws CLI and boto3
    # otherwise need one named): ask it the way that mode does. S3 alone needs none.
    region = IMDSRegionProvider(session._session).provide()
    s3 = session.client("s3", endpoint_url=s3_url)
    other = "bob" if user == "alice" else "alice"
    sts = session.client("sts", endpoint_url=s3_url, region_name=region)
    return {
        "provider": session.get_credentials().method,
        "region": region,
        "caller": sts.get_caller_identity()["Arn"],
        "write_own": outcome(lambda: s3.put_object(Bucket=f"{user}-data", Key="k", Body=b"x")),
        "read_shared": s3.get_object(Bucket="shared-refs", Key="refs/genome.fa")["Body"]
        .read()
        .decode()
        .splitlines()[0],
        "list_other": outcome(lambda: s3.list_objects_v2(Bucket=f"{other}-data")),
    }


def gcp(user: str) -> dict[str, object]:
    import google.auth
    import google.auth.transport.requests
    from google.api_core import exceptions
    from google.cloud import storage

    def outcome(call: Callable[[], object]) -> str:
        try:
            call()
            return "ok"
        except exceptions.Forbidden:
            return "Forbidden"

    credentials, project = google.auth.default()
    credentials.refresh(google.auth.transport.requests.Request())
    client = storage.Client()
    other = "bob" if user == "alice" else "alice"
    return {
        "credentials": type(credentials).__module__ + "." + type(credentials).__name__,
        "email": credentials.service_account_email,
        "project": project,
        "write_own": outcome(
            lambda: client.bucket(f"{user}-data").blob("hello.txt").upload_from_string(b"hi")
        ),
        "read_shared": client.bucket("shared-refs")
        .blob("refs/genome.fa")
        .download_as_bytes()
        .decode()
        .splitlines()[0],
        "list_other": outcome(lambda: list(client.list_blobs(f"{other}-data"))),
    }


def azure(user: str, blob_url: str) -> dict[str, object]:
    import jwt
    from azure.core.exceptions import HttpResponseError
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
    from azure.storage.blob import BlobServiceClient

    def outcome(call: Callable[[], object]) -> str:
        try:
            call()
            return "ok"
        except HttpResponseError as exc:
            return str(exc.error_code or exc.status_code)

    def claims(token: str) -> dict[str, object]:
        decoded = jwt.decode(token, options={"verify_signature": False})
        return {k: decoded[k] for k in ("oid", "appid", "tid", "aud")}

    default = DefaultAzureCredential()
    service = BlobServiceClient(blob_url, credential=default)
    other = "bob" if user == "alice" else "alice"
    return {
        "managed_identity": claims(ManagedIdentityCredential().get_token(STORAGE).token),
        "default_credential": claims(default.get_token(STORAGE).token),
        "write_own": outcome(
            lambda: service.get_container_client(f"{user}-data").upload_blob(
                "hello.txt", b"hi", overwrite=True
            )
        ),
        "list_other": outcome(
            lambda: list(service.get_container_client(f"{other}-data").list_blobs())
        ),
    }


if __name__ == "__main__":
    cloud, args = sys.argv[1], sys.argv[2:]
    run = {"aws": aws, "gcp": gcp, "azure": azure}[cloud]
    print(json.dumps(run(*args)))
