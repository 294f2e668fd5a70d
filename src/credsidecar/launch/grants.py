"""The identities a launch token grants, one frozen dataclass per provider, on both sides.

The issuer writes each granted identity into the launch token's `identities` claim with
`to_claim()`; the sidecar reads the claim once, in `read_claims`, with `Grants.from_claim` and
from then on holds typed grants only. A claim of the wrong shape is refused there with a message
naming the field, never a `KeyError` further down.

    {"identities": {"aws": [{"name": ..., "role_arn": ..., "audience": ...}, ...],  # default first
                    "gcp": [...], "azure": [...], "hpc": [...]}}

Fields a newer issuer adds are ignored, and so are providers this sidecar does not know, so a
sidecar keeps working with an issuer one release ahead.

Also here, because both sides need them and this module imports no SDK: the identity URN that
names one granted identity in an exchange, and the patterns of IAM role ARNs and Linux usernames.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE, AZURE_AUDIENCE
from credsidecar.errors import BadRequest, ConfigError, CredsidecarError

__all__ = [
    "LINUX_USERNAME",
    "PROVIDERS",
    "ROLE_ARN",
    "SOURCES",
    "AwsGrant",
    "AzureGrant",
    "GcpGrant",
    "Grant",
    "GrantT",
    "Grants",
    "HpcGrant",
    "azure_default_subject",
    "identity_urn",
    "parse_identity_urn",
]

PROVIDERS = ("aws", "gcp", "azure", "hpc")

# An IAM role ARN in any partition (aws, aws-cn, aws-us-gov); groups: account, role path+name.
ROLE_ARN = re.compile(
    r"arn:aws[\w-]*:iam::(?P<account>\d{12}):role/(?P<name>[\w+=,.@/-]{1,512})", re.ASCII
)
# A portable Linux username (useradd's default NAME_REGEX, 32 characters at most).
LINUX_USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")

# `resource` of an RFC 8693 exchange naming one identity of the launch token.
_URN_PREFIX = "urn:credsidecar:identity:"
_URN = re.compile(re.escape(_URN_PREFIX) + r"(\w+):(.+)")


ErrorType = type[CredsidecarError]


def identity_urn(provider: str, name: str) -> str:
    """`urn:credsidecar:identity:PROVIDER:NAME`: the identity an exchange asks for."""
    return f"{_URN_PREFIX}{provider}:{name}"


def parse_identity_urn(urn: str) -> tuple[str, str]:
    """(provider, name) from `identity_urn`'s output; BadRequest for anything else."""
    match = _URN.fullmatch(urn)
    if not match:
        raise BadRequest(
            f"resource {urn[:100]!r} must look like {_URN_PREFIX}PROVIDER:NAME "
            "(e.g. urn:credsidecar:identity:aws:my-role)"
        )
    return match.group(1), match.group(2)


def azure_default_subject(name: str) -> str:
    """The subject of an Azure identity's federated credential unless the policy sets one."""
    return f"credsidecar:azure:{name}"


class _Reader:
    """Typed access to one grant's claim that names the offending field when it is wrong."""

    def __init__(self, where: str, claim: object, error: type[CredsidecarError]) -> None:
        self.where, self.error = where, error
        if not isinstance(claim, Mapping):
            raise self.error(f"the launch token's {where} must be an object; {_REMEDY}")
        self.claim: Mapping[str, Any] = claim

    def fail(self, key: str, reason: str) -> CredsidecarError:
        return self.error(f"the launch token's {self.where}.{key} {reason}; {_REMEDY}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.claim.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "is missing" if value is None else "must be a non-empty string")
        return value

    def optional(self, key: str) -> str | None:
        value = self.claim.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def source(self) -> str:
        """`source`: "federation" when absent; one this sidecar does not know is refused."""
        value = self.text("source", "federation")
        if value not in SOURCES:
            raise self.fail(
                "source",
                f"is {value[:40]!r}, which this sidecar does not know (it serves "
                f"{' and '.join(SOURCES)}): upgrade the sidecar, or launch without that identity",
            )
        return value

    def port(self, key: str, default: int) -> int:
        value = self.claim.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise self.fail(key, "must be an integer between 1 and 65535")
        return value


_REMEDY = (
    "mint a new launch token (an issuer and a sidecar of different releases may disagree on "
    "its shape)"
)


# Where a sidecar gets an identity's credentials: "federation" (the cloud's token service with
# the issuer's token: AssumeRoleWithWebIdentity, Google STS, Entra) or "node" (the node's own
# metadata service: AWS's instance profile over IMDSv2, then optionally AssumeRole into
# `role_arn`; GCP's node service account, then optionally impersonating `service_account`;
# Azure's system-assigned identity or a user-assigned one named by client_id or resource_id).
SOURCES = ("federation", "node")


@dataclass(frozen=True)
class AwsGrant:
    """One granted AWS role. A node-sourced grant's claim writes its role (if any) under
    `assume_role_arn` and has no `role_arn`, so a sidecar that predates `source` refuses the
    launch token at start-up instead of calling AssumeRoleWithWebIdentity."""

    provider: ClassVar[str] = "aws"
    name: str
    role_arn: str  # "" for a node grant without a role: the instance profile itself
    audience: str = AWS_DEFAULT_AUDIENCE
    session_policy: str | None = None
    source: str = "federation"

    def to_claim(self) -> dict[str, Any]:
        claim = _claim(self)
        if self.source == "federation":
            del claim["source"]  # the claim older sidecars read, unchanged
            return claim
        del claim["audience"]
        role = claim.pop("role_arn")
        if role:
            claim["assume_role_arn"] = role
        return claim

    @classmethod
    def from_claim(
        cls, claim: object, where: str = "identities.aws[0]", error: ErrorType = ConfigError
    ) -> AwsGrant:
        r = _Reader(where, claim, error)
        source = r.source()
        node = source == "node"
        return cls(
            name=r.text("name"),
            role_arn=(r.optional("assume_role_arn") or "") if node else r.text("role_arn"),
            audience=r.text("audience", AWS_DEFAULT_AUDIENCE),
            session_policy=r.optional("session_policy"),
            source=source,
        )


@dataclass(frozen=True)
class GcpGrant:
    """One granted GCP identity. A node-sourced grant has no audience: its claim leaves
    `audience` out, so a sidecar that predates `source` refuses the launch token at start-up
    instead of federating."""

    provider: ClassVar[str] = "gcp"
    name: str
    audience: str  # the workload identity provider's ("" for a node-sourced grant)
    service_account: str | None = None  # None: the federated principal (or node) acts itself
    project_id: str | None = None
    project_number: str | None = None
    source: str = "federation"

    def to_claim(self) -> dict[str, Any]:
        claim = _claim(self)
        if self.source == "federation":
            del claim["source"]  # the claim older sidecars read, unchanged
        else:
            del claim["audience"]
        return claim

    @classmethod
    def from_claim(
        cls, claim: object, where: str = "identities.gcp[0]", error: ErrorType = ConfigError
    ) -> GcpGrant:
        r = _Reader(where, claim, error)
        source = r.source()
        return cls(
            name=r.text("name"),
            audience=(r.optional("audience") or "") if source == "node" else r.text("audience"),
            service_account=r.optional("service_account"),
            project_id=r.optional("project_id"),
            project_number=r.optional("project_number"),
            source=source,
        )


@dataclass(frozen=True)
class AzureGrant:
    """One granted Azure identity. A node-sourced grant has no tenant (and no client id for
    the node's system-assigned identity): its claim leaves `tenant_id` out, so a sidecar that
    predates `source` refuses the launch token at start-up instead of federating."""

    provider: ClassVar[str] = "azure"
    name: str
    tenant_id: str
    client_id: str
    audience: str = AZURE_AUDIENCE
    object_id: str | None = None
    resource_id: str | None = None
    source: str = "federation"

    def to_claim(self) -> dict[str, Any]:
        claim = _claim(self)
        if self.source == "federation":
            del claim["source"]  # the claim older sidecars read, unchanged
        else:
            claim = {k: v for k, v in claim.items() if v != "" and k != "audience"}
        return claim

    @classmethod
    def from_claim(
        cls, claim: object, where: str = "identities.azure[0]", error: ErrorType = ConfigError
    ) -> AzureGrant:
        r = _Reader(where, claim, error)
        source = r.source()
        node = source == "node"
        return cls(
            name=r.text("name"),
            tenant_id=(r.optional("tenant_id") or "") if node else r.text("tenant_id"),
            client_id=(r.optional("client_id") or "") if node else r.text("client_id"),
            audience=r.text("audience", AZURE_AUDIENCE),
            object_id=r.optional("object_id"),
            resource_id=r.optional("resource_id"),
            source=source,
        )


@dataclass(frozen=True)
class HpcGrant:
    provider: ClassVar[str] = "hpc"
    name: str  # the cluster
    host: str
    username: str  # the launching user's Linux account on the cluster
    scheduler: str = "slurm"
    port: int = 22

    def to_claim(self) -> dict[str, Any]:
        return _claim(self)

    @classmethod
    def from_claim(
        cls, claim: object, where: str = "identities.hpc[0]", error: ErrorType = ConfigError
    ) -> HpcGrant:
        r = _Reader(where, claim, error)
        return cls(
            name=r.text("name"),
            host=r.text("host"),
            username=r.text("username"),
            scheduler=r.text("scheduler", "slurm"),
            port=r.port("port", 22),
        )


Grant = AwsGrant | GcpGrant | AzureGrant | HpcGrant
# One grant type, whichever: `Grants.get(AwsGrant)` is typed as returning an AwsGrant.
GrantT = TypeVar("GrantT", AwsGrant, GcpGrant, AzureGrant, HpcGrant)


def _claim(grant: Grant) -> dict[str, Any]:
    """The grant's fields, leaving out optional ones that are unset."""
    values = {f.name: getattr(grant, f.name) for f in fields(grant)}
    return {k: v for k, v in values.items() if v is not None}


def _parse(
    value: Mapping[str, Any], grant_type: type[GrantT], error: ErrorType
) -> tuple[GrantT, ...]:
    provider = grant_type.provider
    claims = value.get(provider, [])
    if not isinstance(claims, list):
        raise error(f"the launch token's identities.{provider} must be a list; {_REMEDY}")
    return tuple(
        grant_type.from_claim(claim, f"identities.{provider}[{i}]", error)
        for i, claim in enumerate(claims)
    )


@dataclass(frozen=True)
class Grants:
    """Every identity one launch token grants, per provider, the default first."""

    aws: tuple[AwsGrant, ...] = ()
    gcp: tuple[GcpGrant, ...] = ()
    azure: tuple[AzureGrant, ...] = ()
    hpc: tuple[HpcGrant, ...] = ()

    def of(self, provider: str) -> tuple[Grant, ...]:
        """The grants of `provider` (none for a provider this release does not know)."""
        found: tuple[Grant, ...] = getattr(self, provider) if provider in PROVIDERS else ()
        return found

    def get(self, kind: type[GrantT], name: str | None = None) -> GrantT | None:
        """The grant of `kind` called `name`, or the default (the first) when no name is asked
        for; None when the token carries no such grant."""
        found: tuple[GrantT, ...] = getattr(self, kind.provider)
        if name is None:
            return found[0] if found else None
        return next((g for g in found if g.name == name), None)

    def names(self, provider: str) -> list[str]:
        return [g.name for g in self.of(provider)]

    def to_claim(self) -> dict[str, list[dict[str, Any]]]:
        """The `identities` claim: only providers with at least one grant appear."""
        return {p: [g.to_claim() for g in self.of(p)] for p in PROVIDERS if self.of(p)}

    @classmethod
    def from_claim(cls, value: object, error: ErrorType = ConfigError) -> Grants:
        """Parses the `identities` claim; anything malformed raises `error` naming the field.

        The sidecar reads a token it cannot verify and stops at start-up with a ConfigError;
        the issuer reads tokens it signed and passes InvalidGrant."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise error(
                "the launch token's identities claim must map each provider to a list of "
                f"identities; {_REMEDY}"
            )
        return cls(
            aws=_parse(value, AwsGrant, error),
            gcp=_parse(value, GcpGrant, error),
            azure=_parse(value, AzureGrant, error),
            hpc=_parse(value, HpcGrant, error),
        )
