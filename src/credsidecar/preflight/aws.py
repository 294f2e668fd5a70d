"""S3: can these credentials use this bucket and prefix?

Read: `ListObjectsV2` (MaxKeys=1) under the prefix proves s3:ListBucket; when it finds an
object, a `HeadObject` of it proves s3:GetObject too (the permission reading needs, which a
listing does not test). Write: a `PutObject` of an empty marker under
`PREFIX/.credsidecar-preflight/<random>`, then its `DeleteObject` (s3:PutObject, and
s3:DeleteObject when the target needs delete). S3 answers these by IAM policy alone: no
permission-testing API exists.

botocore signs the requests (SigV4 is not worth re-implementing); it is an optional extra
(`credsidecar[preflight]`) imported only here, and its blocking calls run in a thread.

A caveat for the sandbox: moto checks IAM before the bucket exists, so a missing bucket the
role has no rights on reads "denied" there, where S3 itself answers NoSuchBucket ("not found").
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

from credsidecar.clouds.contracts import AwsCredentials
from credsidecar.errors import ConfigError
from credsidecar.preflight.model import Access, CloudEndpoints, Outcome, Target, Verdict
from credsidecar.preflight.probe import (
    CONNECT_TIMEOUT,
    TOTAL_TIMEOUT,
    Refused,
    clean_detail,
    marker_left,
    marker_name,
    unreachable,
    write_accesses,
)

__all__ = ["INSTALL_HINT", "check_aws"]

INSTALL_HINT = "pip install 'credsidecar[preflight]'"
# One retry: S3 throttling (SlowDown) and a dropped connection pass on a second try; more
# would make an unreachable endpoint cost a preflight many seconds.
MAX_ATTEMPTS = 2
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_NO_CREDENTIALS = frozenset({
    "InvalidAccessKeyId", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "SignatureDoesNotMatch", "InvalidClientTokenId",
})  # fmt: skip
_NOT_FOUND = frozenset({"NoSuchBucket"})
_create_lock = threading.Lock()  # botocore sessions are not thread-safe; clients are


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    """One botocore session for every check: it caches the S3 model a client loads (~0.1 s)."""
    import botocore.session

    return botocore.session.get_session()


def _client(credentials: AwsCredentials, endpoints: CloudEndpoints) -> Any:
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=TOTAL_TIMEOUT,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        user_agent_extra="credsidecar-preflight",
    )
    with _create_lock:
        return _session().create_client(
            "s3",
            region_name=endpoints.aws_region,
            endpoint_url=endpoints.s3_url,
            # botocore trusts the file *instead of* its bundle: only for a custom endpoint
            # (the sandbox, a private S3) is it the CA to trust; AWS's own needs the public ones.
            verify=(endpoints.ca_file if endpoints.s3_url else None) or True,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=config,
        )


def _call(
    what: str, permission: str, secrets: tuple[str, ...], method: Any, **params: Any
) -> dict[str, Any]:
    """`method(**params)`, its failure as Refused naming `permission` when it was denied."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(method(**params))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", "unknown"))  # fmt: skip
        message = str(error.get("Message") or "")
        detail = clean_detail(f"{what}: {code}" + (f": {message}" if message else ""), secrets)
        if code in _NO_CREDENTIALS:
            raise Refused(Outcome.NO_CREDENTIALS, detail) from exc
        if code in _NOT_FOUND:
            raise Refused(Outcome.NOT_FOUND, detail) from exc
        if code in _DENIED:
            raise Refused(Outcome.DENIED, detail, (permission,)) from exc
        raise Refused(Outcome.UNREACHABLE, detail) from exc
    except BotoCoreError as exc:  # no connection, timeout, TLS, a response it cannot parse
        detail = clean_detail(f"{what}: {exc}", secrets)
        raise Refused(Outcome.UNREACHABLE, detail) from exc


def _probe(
    target: Target, credentials: AwsCredentials, endpoints: CloudEndpoints, write_probe: bool
) -> tuple[str, tuple[Access, ...]]:
    """Runs the calls the target's access needs (in a thread); returns (detail, unverified)
    or raises Refused for the first that fails."""
    secrets = (credentials.secret_access_key, credentials.session_token)
    s3 = _client(credentials, endpoints)
    bucket, prefix = target.location, target.prefix
    notes: list[str] = []
    try:
        if Access.READ in target.access:
            listed = _call("ListObjectsV2", "s3:ListBucket", secrets, s3.list_objects_v2,
                           Bucket=bucket, Prefix=prefix, MaxKeys=1)  # fmt: skip
            contents = listed.get("Contents") or []
            if contents:
                _call("HeadObject", "s3:GetObject", secrets, s3.head_object,
                      Bucket=bucket, Key=contents[0]["Key"])  # fmt: skip
            else:
                notes.append("nothing is stored under this prefix yet")
        wanted = write_accesses(target)
        if wanted and not write_probe:
            return "; ".join(notes), wanted
        if wanted:
            key = marker_name(prefix)
            _call("PutObject", "s3:PutObject", secrets, s3.put_object,
                  Bucket=bucket, Key=key, Body=b"")  # fmt: skip
            try:
                _call("DeleteObject", "s3:DeleteObject", secrets, s3.delete_object,
                      Bucket=bucket, Key=key)  # fmt: skip
            except Refused as refused:
                notes.append(marker_left(refused, target, f"s3://{bucket}/{key}"))
    finally:
        s3.close()
    return "; ".join(notes), ()


async def check_aws(
    target: Target,
    credentials: AwsCredentials,
    identity: str,
    endpoints: CloudEndpoints,
    *,
    write_probe: bool = True,
) -> Verdict:
    """What `credentials` (the cloud identity `identity`, e.g. a role ARN) may do on `target`.

    ConfigError when botocore is not installed (the `preflight` extra)."""
    try:
        await asyncio.to_thread(_session)
    except ImportError as exc:
        raise ConfigError(
            f"Checking S3 paths needs botocore, which is not installed: {INSTALL_HINT}."
        ) from exc
    try:
        detail, unverified = await asyncio.to_thread(
            _probe, target, credentials, endpoints, write_probe
        )
    except Refused as refused:
        return refused.verdict(target, identity)
    except (OSError, ValueError) as exc:  # a CA file that cannot be read, a bad endpoint URL
        return unreachable(target, identity, "S3", exc)
    return Verdict(target, Outcome.OK, identity, detail=detail, unverified=unverified)
