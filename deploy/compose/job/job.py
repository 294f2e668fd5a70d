"""The compose job: unmodified tools as alice against the sandbox clouds, allowed and denied.

Runs with the sidecar's job environment in its own (compose.yaml sources /tmp/compose/job.env):
the aws CLI, google-cloud-storage and azure-storage-blob with azure-identity, none of them told
about credsidecar. Prints one `compose-job: CHECK -> OUTCOME` line per check, then
`compose-job: ok` and exits 0 when every outcome is the expected one, else `compose-job: FAILED`
and exits 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from azure.core.exceptions import HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import storage

USER, OTHER = "alice", "bob"
# What `credsidecar sandbox` wrote, on the volume compose.yaml mounts on /tmp.
SANDBOX = Path("/tmp/compose/sandbox.json")  # noqa: S108


def aws(*args: str) -> str:
    """The aws CLI: `ok`, or the error code it printed."""
    done = subprocess.run(["aws", *args], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return "ok"
    return "AccessDenied" if "AccessDenied" in done.stderr else done.stderr.strip()[-300:]


def call(how: Callable[[], object]) -> str:
    """A cloud SDK call: `ok`, or its HTTP error's code."""
    try:
        how()
    except GoogleAPICallError as exc:
        return type(exc).__name__
    except HttpResponseError as exc:
        return str(exc.error_code or exc.status_code)
    return "ok"


def main() -> int:
    gcs = storage.Client()
    blob_url = json.loads(SANDBOX.read_text(encoding="utf-8"))["azure"]["blob_url"]
    blobs = BlobServiceClient(blob_url, credential=DefaultAzureCredential())
    # check -> (how, the expected outcome)
    checks: dict[str, tuple[Callable[[], str], str]] = {
        "aws sts get-caller-identity": (lambda: aws("sts", "get-caller-identity"), "ok"),
        f"aws s3 ls s3://{USER}-data/": (lambda: aws("s3", "ls", f"s3://{USER}-data/"), "ok"),
        "aws s3 cp s3://shared-refs/refs/genome.fa -": (
            lambda: aws("s3", "cp", "s3://shared-refs/refs/genome.fa", "-"), "ok"
        ),
        f"aws s3 ls s3://{OTHER}-data/": (
            lambda: aws("s3", "ls", f"s3://{OTHER}-data/"), "AccessDenied"
        ),
        f"gcs list {USER}-data": (lambda: call(lambda: list(gcs.list_blobs(f"{USER}-data"))), "ok"),
        f"gcs list {OTHER}-data": (
            lambda: call(lambda: list(gcs.list_blobs(f"{OTHER}-data"))), "Forbidden"
        ),
        f"blob list {USER}-data": (
            lambda: call(lambda: list(blobs.get_container_client(f"{USER}-data").list_blobs())),
            "ok",
        ),
        f"blob list {OTHER}-data": (
            lambda: call(lambda: list(blobs.get_container_client(f"{OTHER}-data").list_blobs())),
            "AuthorizationPermissionMismatch",
        ),
    }  # fmt: skip
    failed = 0
    for name, (how, expected) in checks.items():
        got = how()
        failed += got != expected
        note = "" if got == expected else f"  (expected {expected})"
        print(f"compose-job: {name} -> {got}{note}", flush=True)
    print(f"compose-job: FAILED ({failed})" if failed else "compose-job: ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
