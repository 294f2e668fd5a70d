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
    ├── Unavailable             503 temporarily_unavailable: retryable upstream or local trouble
    └── ConfigError             a configuration or policy file is wrong (never sent over HTTP)

Messages are one sentence naming the offending thing and the way out; they never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ConfigError",
    "CredsidecarError",
    "Forbidden",
    "InvalidGrant",
    "InvalidTarget",
    "LimitExceeded",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
]


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


class Unavailable(CredsidecarError):
    status = 503
    code = "temporarily_unavailable"
    retryable = True

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(CredsidecarError):
    """A file is wrong; `path` is the key path inside it, used to find the line to report."""

    code = "config_error"

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
