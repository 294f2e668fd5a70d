"""The job container's client in classic-pod.yaml: only the standard library (the image has no
cloud SDK). Prints one JSON object: what the container endpoint answered with and without the
per-job secret."""

from __future__ import annotations

import json
import os
import pathlib
import urllib.error
import urllib.request


def fetch(authorization: str | None) -> dict[str, object]:
    request = urllib.request.Request(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
            return {"status": resp.status, "key": body["AccessKeyId"][:4]}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code}


secret_file = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
secret = pathlib.Path(secret_file).read_text() if secret_file else None
secret = secret or os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
print(json.dumps({"with_secret": fetch(secret), "without_secret": fetch(None)}), flush=True)
