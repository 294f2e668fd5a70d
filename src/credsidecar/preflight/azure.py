"""Azure Blob storage: can this access token use this container and prefix?

Read: List Blobs (`?restype=container&comp=list&maxresults=1&prefix=PREFIX`), which needs the
same data action as reading a blob (`.../containers/blobs/read`). Write: Put Blob of an empty
marker under `PREFIX/.credsidecar-preflight/<random>` (`.../blobs/write`), then Delete Blob
(`.../blobs/delete`). Azure RBAC has no permission-testing call for data actions.

The Blob endpoint: https://ACCOUNT.blob.core.windows.net, unless `CloudEndpoints.azure_blob_url`
names another (the sandbox, a private endpoint). That URL serves one storage account: the one
its path ends with (path-style, as the sandbox and Azurite serve it) or else its host's first
label. A target in another account is reported "not reachable" (it could not be checked),
naming both accounts, rather than checked against an account it does not name.
"""

from __future__ import annotations

import email.utils
import re
from urllib.parse import quote, urlsplit

import aiohttp

from credsidecar.preflight.model import Access, CloudEndpoints, Outcome, Target, Verdict
from credsidecar.preflight.probe import (
    Refused,
    clean_detail,
    marker_left,
    marker_name,
    probe_session,
    read_capped,
    unreachable,
    write_accesses,
)

__all__ = ["ACTIONS", "API_VERSION", "account_url", "check_azure"]

# A service version azure-storage-blob 12.2x sends (and the sandbox answers with by default).
API_VERSION = "2025-01-05"
_DATA = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/"
ACTIONS = {Access.READ: _DATA + "read", Access.WRITE: _DATA + "write",
           Access.DELETE: _DATA + "delete"}  # fmt: skip
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
# The message's first line: Azure appends "RequestId:..." and "Time:..." lines to every one.
_MESSAGE = re.compile(rb"<Message>([^<\n]{1,300})")
_NO_CREDENTIALS = frozenset({
    "InvalidAuthenticationInfo", "NoAuthenticationInformation", "AuthenticationFailed",
})  # fmt: skip
_NOT_FOUND = frozenset({"ContainerNotFound", "ResourceNotFound", "AccountIsDisabled"})


def account_url(account: str, endpoints: CloudEndpoints) -> tuple[str, str | None]:
    """(the Blob endpoint for `account`, None) or (the configured endpoint, the account it
    serves) when `account` is not that one."""
    if endpoints.azure_blob_url is None:
        return f"https://{account}.blob.core.windows.net", None
    url = endpoints.azure_blob_url.rstrip("/")
    parts = urlsplit(url)
    served = parts.path.rsplit("/", 1)[-1] or (parts.hostname or "").split(".", 1)[0]
    return url, (None if served.lower() == account.lower() else served)


class _Blob:
    """One target's requests: the headers every call carries, errors read as verdicts."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base, self._token = http, base, token

    async def call(
        self,
        what: str,
        access: Access,
        method: str,
        path: str,
        expect: int,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> bytes:
        """The body of a `method` on `path` answered `expect`; else Refused, saying which
        permission (the data action for `access`) is missing when that is what it means."""
        sent = {
            "Authorization": f"Bearer {self._token}",
            "x-ms-version": API_VERSION,
            "x-ms-date": email.utils.formatdate(usegmt=True),
            **(headers or {}),
        }
        url = f"{self.base}/{quote(path, safe='/')}"
        async with self.http.request(method, url, params=params, headers=sent, data=data) as resp:
            body = await read_capped(resp)
            if resp.status == expect:
                return body
            code = resp.headers.get("x-ms-error-code") or _first(_CODE, body) or ""
        message = _first(_MESSAGE, body)
        text = f"{what}: HTTP {resp.status} {code}".rstrip() + (f": {message}" if message else "")
        detail = clean_detail(text, (self._token,))
        if resp.status == 401 or code in _NO_CREDENTIALS:
            raise Refused(Outcome.NO_CREDENTIALS, detail)
        if resp.status == 404 and code in _NOT_FOUND:
            raise Refused(Outcome.NOT_FOUND, detail)
        if code == "AuthorizationPermissionMismatch":
            raise Refused(Outcome.DENIED, detail, (ACTIONS[access],))
        if resp.status == 403:  # AuthorizationFailure: network rules, a disabled account...
            raise Refused(Outcome.DENIED, detail)
        raise Refused(Outcome.UNREACHABLE, detail)


def _first(pattern: re.Pattern[bytes], body: bytes) -> str:
    found = pattern.search(body)
    return found.group(1).decode("utf-8", "replace").strip() if found else ""


async def _probe(blob: _Blob, target: Target, write_probe: bool) -> tuple[str, tuple[Access, ...]]:
    container, prefix = str(target.container), target.prefix
    notes: list[str] = []
    if Access.READ in target.access:
        query = {"restype": "container", "comp": "list", "maxresults": "1", "prefix": prefix}
        listing = await blob.call("List Blobs", Access.READ, "GET", container, 200, params=query)
        if b"<Blob>" not in listing:
            notes.append("nothing is stored under this prefix yet")
    wanted = write_accesses(target)
    if wanted and not write_probe:
        return "; ".join(notes), wanted
    if wanted:
        name = f"{container}/{marker_name(prefix)}"
        await blob.call("Put Blob", Access.WRITE, "PUT", name, 201, data=b"",
                        headers={"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"})  # fmt: skip
        try:
            await blob.call("Delete Blob", Access.DELETE, "DELETE", name, 202)
        except Refused as refused:
            notes.append(marker_left(refused, target, f"{blob.base}/{name}"))
    return "; ".join(notes), ()


async def check_azure(
    target: Target,
    access_token: str,
    identity: str,
    endpoints: CloudEndpoints,
    *,
    write_probe: bool = True,
    session: aiohttp.ClientSession | None = None,
) -> Verdict:
    """What `access_token` (for the managed identity `identity`, e.g. its client id) may do on
    `target`. `session`: a shared client session (default: one of its own, closed after)."""
    base, served = account_url(target.location, endpoints)
    if served is not None:  # not checked: "not found" would claim the account does not exist
        detail = (f"storage account {target.location!r} cannot be checked through {base}, which "
                  f"serves account {served!r} only")  # fmt: skip
        return Verdict(target, Outcome.UNREACHABLE, identity, detail=detail)
    try:
        async with probe_session(endpoints.ca_file, session) as http:
            detail, unverified = await _probe(_Blob(http, base, access_token), target,
                                              write_probe)  # fmt: skip
    except Refused as refused:
        return refused.verdict(target, identity)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return unreachable(target, identity, "Azure Blob storage", exc)
    return Verdict(target, Outcome.OK, identity, detail=detail, unverified=unverified)
