"""What the issuer's HTTP modules share: the app keys of the services, request bodies and
credentials parsed in one place (strictly, so malformed input is a clear 400/401 and never a 500),
JSON out, and `error_response`, the one mapping from any failure to an answer (app.py's
middleware turns every exception into a CredsidecarError and hands it there)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from aiohttp import web

from credsidecar.errors import BadRequest, CredsidecarError, Unauthorized
from credsidecar.issuer.hpc_launch import HpcLaunches
from credsidecar.issuer.hpc_service import HpcService
from credsidecar.issuer.service import IssuerService

__all__ = [
    "HPC",
    "HPC_LAUNCHES",
    "SERVICE",
    "bearer_token",
    "error_response",
    "form_body",
    "json_body",
    "no_store_json",
]

SERVICE = web.AppKey("service", IssuerService)
HPC = web.AppKey("hpc", HpcService)
HPC_LAUNCHES = web.AppKey("hpc_launches", HpcLaunches)

FORM = "application/x-www-form-urlencoded"
# Integers in our bodies are lifetimes and counts; 20 digits pass any 64-bit value, and int() of
# thousands of digits is slow, then refused.
MAX_INT_DIGITS = 20
# RFC 8693 requests carry about ten parameters.
MAX_FORM_FIELDS = 64


def no_store_json(data: Any, status: int = 200) -> web.Response:
    # OAuth responses carrying tokens must not be cached (RFC 6749 section 5.1).
    return web.json_response(
        data, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


def error_response(exc: CredsidecarError) -> web.Response:
    """What the issuer and its HPC API answer for `exc`: its status and OAuth error body (RFC 6749
    section 5.2), never cached; a 401 names the bearer realm (RFC 6750 section 3) and a retryable
    error says when to try again."""
    response = no_store_json(exc.to_json(), status=exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="credsidecar-issuer"'
    if exc.retryable:
        response.headers["Retry-After"] = str(max(1, getattr(exc, "retry_after", 5)))
    return response


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(
            f"the request body holds a {len(text)}-digit number; numbers have at most "
            f"{MAX_INT_DIGITS} digits"
        )
    return int(text)


def _no_constant(name: str) -> Any:
    raise BadRequest(f"the request body holds {name}, which is not JSON; send numbers")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the request body is not {what}: invalid UTF-8 at byte {exc.start}; send UTF-8"
        ) from None


async def json_body(request: web.Request) -> Any:
    """The JSON body ({} when empty): UTF-8 (RFC 8259), bounded numbers, no NaN/Infinity."""
    raw = await request.read()  # bounded by the app's client_max_size (413 above it)
    if not raw:
        return {}
    text = _utf8(raw, "valid JSON")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(
            "the request body nests arrays or objects too deeply; send a flat JSON object"
        ) from None


async def form_body(request: web.Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (RFC 8693 requests), UTF-8 throughout."""
    if request.content_type != FORM:
        raise BadRequest(
            f"the request body must be {FORM} (RFC 8693) or application/json, "
            f"not {request.content_type[:80]!r}"
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise BadRequest(
            f"the request body's charset {charset[:40]!r} is not supported; send UTF-8"
        )
    text = _utf8(await request.read(), "form data")
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )  # fmt: skip
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the request body is not form data: a %-escape decodes to invalid UTF-8 ({exc.reason})"
        ) from None
    except ValueError:  # only raised for too many fields
        raise BadRequest(f"the request body has more than {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)


def bearer_token(request: web.Request, what: str) -> str | None:
    """The `Authorization: Bearer` credential, None if there is none; `what` names it in errors.

    Our keys and tokens are ASCII: another value cannot be one, and hashing undecodable header
    bytes (aiohttp keeps them as surrogates) would fail, so it is refused here as not valid."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    if not presented.isascii():
        raise Unauthorized(f"the {what} is not valid for this issuer")
    return presented
