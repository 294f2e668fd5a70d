"""Unmodified boto3 in a job: default session, no credentials or endpoints in code.

Usage: python boto3_s3.py USER          -> one JSON object: caller ARN and each operation's result
       python boto3_s3.py loop SECONDS   -> repeated reads for SECONDS; JSON counts of ok/errors
"""

from __future__ import annotations

import json
import sys
import time

import boto3
from botocore.exceptions import ClientError


def outcome(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
        return "ok"
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])


def checks(user: str) -> dict[str, str]:
    s3 = boto3.client("s3")
    other = "bob" if user == "alice" else "alice"
    result = {
        "caller": boto3.client("sts").get_caller_identity()["Arn"],
        "provider": boto3.Session().get_credentials().method,
        "write_own": outcome(lambda: s3.put_object(Bucket=f"{user}-data", Key="k", Body=b"x")),
        "read_shared": s3.get_object(Bucket="shared-refs", Key="refs/genome.fa")["Body"]
        .read()
        .decode()
        .splitlines()[0],
        "list_other": outcome(lambda: s3.list_objects_v2(Bucket=f"{other}-data")),
        "write_shared": outcome(lambda: s3.put_object(Bucket="shared-refs", Key="x", Body=b"x")),
    }
    return result


def loop(seconds: float) -> dict[str, object]:
    s3 = boto3.client("s3")
    ok, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s3.head_object(Bucket="shared-refs", Key="refs/genome.fa")
            ok += 1
        except Exception as exc:  # any client-visible failure counts
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        time.sleep(0.2)
    return {"ok": ok, "errors": errors}


if __name__ == "__main__":
    if sys.argv[1] == "loop":
        print(json.dumps(loop(float(sys.argv[2]))))
    else:
        print(json.dumps(checks(sys.argv[1])))
