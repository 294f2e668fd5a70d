"""The job container's client in tests/container/test_pod.py: unmodified cloud SDKs as alice.

Runs in the sandbox image (boto3, google-cloud-storage, azure-identity and azure-storage-blob)
with the env file of deploy/kubernetes/pipeline-pod-classic.yaml's sidecar sourced, none of the
SDKs told about credsidecar. Lists alice's S3 bucket, GCS bucket and Azure container (allowed)
and bob's (denied). The Azure account URL is the one thing no variable names: the test passes it
as SANDBOX_BLOB_URL. Prints one `pod-job: CHECK -> OUTCOME` line per check, then `pod-job: ok`
and exits 0 when every outcome is the expected one, else `pod-job: FAILED (N)` and exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import boto3
from azure.core.exceptions import HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient
from botocore.exceptions import ClientError
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import storage

USER, OTHER = "alice", "bob"


def outcome(how: Callable[[], object]) -> str:
    """A cloud SDK call: `ok`, or the error code the cloud answered with."""
    try:
        how()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    except GoogleAPICallError as exc:
        return type(exc).__name__
    except HttpResponseError as exc:
        return str(exc.error_code or exc.status_code)
    return "ok"


def main() -> int:
    s3 = boto3.client("s3")
    gcs = storage.Client()
    blobs = BlobServiceClient(os.environ["SANDBOX_BLOB_URL"], credential=DefaultAzureCredential())
    # check -> (how, the expected outcome)
    checks: dict[str, tuple[Callable[[], object], str]] = {}
    for user, s3_expected, gcs_expected, blob_expected in [
        (USER, "ok", "ok", "ok"),
        (OTHER, "AccessDenied", "Forbidden", "AuthorizationPermissionMismatch"),
    ]:
        bucket = f"{user}-data"
        checks[f"s3 list {bucket}"] = (lambda b=bucket: s3.list_objects_v2(Bucket=b), s3_expected)
        checks[f"gcs list {bucket}"] = (lambda b=bucket: list(gcs.list_blobs(b)), gcs_expected)
        checks[f"blob list {bucket}"] = (
            lambda b=bucket: list(blobs.get_container_client(b).list_blobs()),
            blob_expected,
        )
    failed = 0
    for name, (how, expected) in checks.items():
        got = outcome(how)
        failed += got != expected
        note = "" if got == expected else f"  (expected {expected})"
        print(f"pod-job: {name} -> {got}{note}", flush=True)
    print(f"pod-job: FAILED ({failed})" if failed else "pod-job: ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
