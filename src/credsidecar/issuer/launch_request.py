"""What a platform asks the issuer for at launch: parsed and checked once, at the boundary."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from credsidecar.errors import BadRequest
from credsidecar.issuer.identities import PROVIDERS

__all__ = ["FIELD", "PIPELINE", "LaunchRequest"]

# Launch fields end up in AWS session tags and role session names: keep to AWS's tag charset.
FIELD = re.compile(r"[\w.@:/+=-]{1,128}", re.ASCII)
PIPELINE = re.compile(r"[\w.@:/+=-]{1,256}", re.ASCII)


@dataclass(frozen=True)
class LaunchRequest:
    user: str
    run: str
    workspace: str | None = None
    pipeline: str | None = None
    selections: Mapping[str, tuple[str, ...]] | None = None
    lifetime: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = set(body) - {"user", "run", "workspace", "pipeline", "identities", "lifetime"}
        if unknown:
            raise BadRequest(f"unknown field(s) {sorted(unknown)} in launch token request")

        def text(key: str, pattern: re.Pattern[str], required: bool) -> str | None:
            value = body.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise BadRequest(
                    f"`{key}` must be a string of up to {128 if pattern is FIELD else 256} "
                    "letters, digits and _.@:/+=-"
                )
            return value

        selections: dict[str, tuple[str, ...]] = {}
        raw = body.get("identities") or {}
        if not isinstance(raw, dict):
            raise BadRequest("`identities` must map a provider to an identity name or a list")
        for provider, chosen in raw.items():
            if provider not in PROVIDERS:
                raise BadRequest(f"unknown provider {provider!r} in `identities`")
            names = [chosen] if isinstance(chosen, str) else chosen
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise BadRequest(f"`identities.{provider}` must be a name or a list of names")
            selections[provider] = tuple(dict.fromkeys(names))
        lifetime = body.get("lifetime")
        if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)):
            raise BadRequest("`lifetime` must be an integer number of seconds")
        return cls(
            user=str(text("user", FIELD, True)),
            run=str(text("run", FIELD, True)),
            workspace=text("workspace", FIELD, False),
            pipeline=text("pipeline", PIPELINE, False),
            selections=selections,
            lifetime=lifetime,
        )
