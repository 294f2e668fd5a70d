"""Cloud Storage: does this access token hold the permissions a target needs on its bucket?

One call, no writes: the bucket's `testIamPermissions`
(`GET /storage/v1/b/BUCKET/iam/testPermissions?permissions=...`) with exactly the permissions
the access needs (read: storage.objects.list and storage.objects.get; write:
storage.objects.create; delete: storage.objects.delete). GCS answers with the subset the caller
holds. What the JSON API reference and google-cloud-storage say about it: the method needs no
permission itself, so a caller with no role on an existing bucket gets 200 with no
`permissions` field at all (the client reads `resp.get("permissions", [])`); a missing bucket
is 404, a bad token 401. A 403 can still come from outside IAM (VPC Service Controls, a token
without a storage scope): it is read as every permission denied, with GCS's words in the
detail.

Permissions are granted per bucket (IAM Conditions on object-name prefixes are not evaluated
by this call), so the prefix does not change the answer.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from credsidecar.preflight.model import Access, CloudEndpoints, Outcome, Target, Verdict
from credsidecar.preflight.probe import clean_detail, probe_session, read_capped, unreachable

__all__ = ["PERMISSIONS", "check_gcp", "permissions_for"]

PERMISSIONS: dict[Access, tuple[str, ...]] = {
    Access.READ: ("storage.objects.list", "storage.objects.get"),
    Access.WRITE: ("storage.objects.create",),
    Access.DELETE: ("storage.objects.delete",),
}


def permissions_for(access: frozenset[Access]) -> tuple[str, ...]:
    """The GCS permissions `access` needs, in a stable order."""
    return tuple(p for a in (Access.READ, Access.WRITE, Access.DELETE) if a in access
                 for p in PERMISSIONS[a])  # fmt: skip


def _message(body: Any, status: int) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"HTTP {status}" + (f": {message}" if isinstance(message, str) else "")


async def check_gcp(
    target: Target,
    access_token: str,
    identity: str,
    endpoints: CloudEndpoints,
    *,
    session: aiohttp.ClientSession | None = None,
) -> Verdict:
    """What `access_token` (the service account or principal `identity`) may do on `target`'s
    bucket. `session`: a shared client session (default: one of its own, closed after)."""
    needed = permissions_for(target.access)
    url = f"{endpoints.gcs_url.rstrip('/')}/storage/v1/b/{quote(target.location, safe='')}"
    url += "/iam/testPermissions"
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    try:
        async with probe_session(endpoints.ca_file, session) as http:
            params = [("permissions", p) for p in needed]
            async with http.get(url, params=params, headers=headers) as resp:
                status, raw = resp.status, await read_capped(resp)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return unreachable(target, identity, "Cloud Storage", exc)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:  # not JSON: something other than GCS answered (a proxy, a portal)
        body = {}
    detail = clean_detail(f"testIamPermissions: {_message(body, status)}", (access_token,))
    if status == 200 and isinstance(body, dict):
        held = body.get("permissions") or []
        missing = tuple(p for p in needed if p not in held)
        if missing:
            return Verdict(target, Outcome.DENIED, identity, missing,
                           clean_detail(f"testIamPermissions: holds {', '.join(held) or 'none'}"
                                        f" of {', '.join(needed)}"))  # fmt: skip
        return Verdict(target, Outcome.OK, identity)
    if status == 404:
        return Verdict(target, Outcome.NOT_FOUND, identity, detail=detail)
    if status == 401:
        return Verdict(target, Outcome.NO_CREDENTIALS, identity, detail=detail)
    if status == 403:
        return Verdict(target, Outcome.DENIED, identity, needed, detail)
    return Verdict(target, Outcome.UNREACHABLE, identity, detail=detail)
