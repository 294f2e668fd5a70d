"""Every failure credsidecar reports, with the HTTP status and OAuth error code it maps to.

    CredsidecarError            base: status, OAuth-style code, retryable flag
    ├── BadRequest              400 invalid_request: malformed or incomplete input
    │   ├── InvalidGrant        400 invalid_grant: a presented token is bad, expired or revoked
    │   └── InvalidTarget       400 invalid_target: the requested audience/identity is not available
    ├── Unauthorized            401 unauthorized: missing or wrong API key or secret
    ├── Forbidden               403 access_denied: policy does not allow it
    ├── NotFound                404 not_found
    ├── PayloadTooLarge         413 request_too_large
    ├── LimitExceeded           422 limit_exceeded: a cloud limit would be broken by what we sign
    ├── RateLimited             429 rate_limited: a platform key or run is over its rate limit
    ├── Unavailable             503 temporarily_unavailable: retryable upstream or local trouble
    ├── HpcApiError             the issuer's HPC API refused a call (`hpc` commands): its HTTP
    │                           status; retryable for 5xx, 408 and 429
    └── ConfigError             a configuration or policy file is wrong (never sent over HTTP)

Messages are one sentence naming the offending thing and the way out; they never contain secrets,
and quote what an outsider controls through `bounded`. The per-cloud "what to do" sentences are
written in one place, clouds/remedies.py.

`answer_status` is the one mapping every sidecar endpoint uses when it has no credentials to
serve: the same refusal gets the same status from every cloud's endpoints. The issuer answers
with each error's own status and body (`issuer/http_common.py`'s `error_response`, the one
mapping for its API and its HPC API).
"""

from __future__ import annotations

import copy

__all__ = [
    "BadRequest",
    "ConfigError",
    "CredsidecarError",
    "Forbidden",
    "HpcApiError",
    "InvalidGrant",
    "InvalidTarget",
    "LimitExceeded",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "answer_status",
    "bounded",
]

# Long enough for any ARN, principal URI or cloud message worth reading; short enough that an
# upstream, a caller or a hostile token cannot make one log line or error body large.
MAX_QUOTED = 300


def bounded(value: object, limit: int = MAX_QUOTED) -> str:
    """`value` as one line of at most `limit` characters ("..." marks a cut): how a message
    quotes anything an outsider controls (an upstream's error text, a claim, a form field)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CredsidecarError(Exception):
    status: int = 500
    code: str = "server_error"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """The OAuth 2.0 error body (RFC 6749 section 5.2) every endpoint uses."""
        return {"error": self.code, "error_description": self.message}

    def restated(self, message: str) -> CredsidecarError:
        """A fresh error of the same kind (class, status, code, retry hint) saying `message`.

        A cache reports its last failure to every request this way: raising one stored
        exception again and again would chain each raise's traceback onto it."""
        fresh = copy.copy(self)  # __dict__ (retry_after, path) is copied; tracebacks are not
        fresh.args, fresh.message = (message,), message
        return fresh


class BadRequest(CredsidecarError):
    status = 400
    code = "invalid_request"


class InvalidGrant(BadRequest):
    code = "invalid_grant"


class InvalidTarget(BadRequest):
    code = "invalid_target"


class Unauthorized(CredsidecarError):
    status = 401
    code = "unauthorized"


class Forbidden(CredsidecarError):
    status = 403
    code = "access_denied"


class NotFound(CredsidecarError):
    status = 404
    code = "not_found"


class PayloadTooLarge(CredsidecarError):
    status = 413
    code = "request_too_large"


class LimitExceeded(CredsidecarError):
    status = 422
    code = "limit_exceeded"


class RateLimited(CredsidecarError):
    """A platform key or run made requests faster than the issuer's `[rate_limits]` allow;
    `retry_after` (whole seconds, >= 1) is when its bucket holds a request again."""

    status = 429
    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class Unavailable(CredsidecarError):
    status = 503
    code = "temporarily_unavailable"
    retryable = True

    def __init__(
        self, message: str, retry_after: int = 5, *, upstream_retry_after: int | None = None
    ) -> None:
        """`upstream_retry_after`: the upstream's own `Retry-After` (seconds), which renewals
        honour: retrying a rate-limited issuer sooner only costs both sides."""
        super().__init__(message)
        self.retry_after = retry_after
        self.upstream_retry_after = upstream_retry_after


class HpcApiError(CredsidecarError):
    """The issuer's HPC API answered `status`; the message carries the issuer's explanation.
    (Not reaching the issuer at all is Unavailable, from the HTTP helper.)"""

    code = "hpc_api_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        # The issuer may answer otherwise later: its own trouble, a timeout, a rate limit.
        self.retryable = status >= 500 or status in (408, 429)


def answer_status(exc: CredsidecarError) -> tuple[int, dict[str, str]]:
    """Status and headers for a sidecar endpoint that cannot serve credentials because of `exc`.

    503 with `Retry-After` for anything that may pass (an outage, a local fault); 400 for a
    request that is wrong (an unknown resource or scope); 403 for a refusal that retrying will
    not change (a revoked run, a trust policy, a token the cloud rejected)."""
    if exc.retryable or exc.status >= 500:
        return 503, {"Retry-After": str(max(1, getattr(exc, "retry_after", 5)))}
    if isinstance(exc, BadRequest) and not isinstance(exc, InvalidGrant):
        return 400, {}
    return 403, {}


class ConfigError(CredsidecarError):
    """A file is wrong; `path` is the key path inside it, used to find the line to report."""

    code = "config_error"

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
