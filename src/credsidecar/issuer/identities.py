"""The cloud and HPC identities a policy can grant, one frozen dataclass per provider.

Each identity knows three things the issuer needs: the audience its cloud expects on a federated
token, the subject that cloud should see for a given user, and the non-secret grant the sidecar
receives in the launch token (role ARN, service account, client id, cluster address): a
`launch/grants.py` dataclass, the type the sidecar reads back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE, AZURE_AUDIENCE
from credsidecar.errors import ConfigError, Forbidden
from credsidecar.launch.grants import (
    LINUX_USERNAME,
    PROVIDERS,
    ROLE_ARN,
    SOURCES,
    AwsGrant,
    AzureGrant,
    GcpGrant,
    Grant,
    HpcGrant,
    azure_default_subject,
)

__all__ = [
    "PROVIDERS",
    "AwsIdentity",
    "AwsNodeIdentity",
    "AzureIdentity",
    "AzureNodeIdentity",
    "GcpIdentity",
    "GcpNodeIdentity",
    "HpcCluster",
    "Identity",
    "parse_identity",
]


SCHEDULERS = frozenset(
    {"slurm", "lsf", "pbs", "pbspro", "torque", "sge", "uge", "moab", "htcondor"}
)

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MI_RES_ID = re.compile(
    r"/subscriptions/[^/]+/resource[Gg]roups/[^/]+/providers/Microsoft\.ManagedIdentity/"
    r"userAssignedIdentities/[^/]+",
    re.IGNORECASE,
)
_MI_RES_ID_HINT = (
    " (a user-assigned identity's resource ID: /subscriptions/SUB/resourceGroups/RG/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/NAME)"
)
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\]")


@dataclass(frozen=True)
class Identity:
    provider: ClassVar[str]
    name: str

    @property
    def audience(self) -> str | None:
        return None

    def subject_for(self, user_subject: str) -> str:
        """AWS and GCP match many subjects in trust policies, so they see the user."""
        return user_subject

    def usable_by(self, user_id: str) -> bool:
        return True

    def grant(self, user_id: str) -> Grant:
        """What the launch token tells the sidecar about this identity, for `user_id`."""
        raise NotImplementedError


@dataclass(frozen=True)
class AwsIdentity(Identity):
    provider: ClassVar[str] = "aws"
    role_arn: str = ""
    aws_audience: str = AWS_DEFAULT_AUDIENCE
    session_tags: Mapping[str, str] = field(default_factory=dict)
    session_policy: str | None = None

    @property
    def audience(self) -> str:
        return self.aws_audience

    def grant(self, user_id: str) -> AwsGrant:
        return AwsGrant(self.name, self.role_arn, self.aws_audience, self.session_policy or None)


@dataclass(frozen=True)
class AwsNodeIdentity(Identity):
    """The instance profile of the node the sidecar runs on (`source = "node"`), optionally
    assuming `role_arn` with it, narrowed by `session_policy`. The sidecar asks the node's
    IMDS for the instance profile's credentials; the issuer mints nothing for it (no audience)
    and only decides who is granted it."""

    provider: ClassVar[str] = "aws"
    role_arn: str | None = None
    session_policy: str | None = None

    def grant(self, user_id: str) -> AwsGrant:
        return AwsGrant(self.name, self.role_arn or "", session_policy=self.session_policy,
                        source="node")  # fmt: skip


@dataclass(frozen=True)
class GcpIdentity(Identity):
    provider: ClassVar[str] = "gcp"
    gcp_audience: str = ""
    service_account: str | None = None
    project_id: str | None = None
    project_number: str | None = None

    @property
    def audience(self) -> str:
        return self.gcp_audience

    def grant(self, user_id: str) -> GcpGrant:
        return GcpGrant(
            name=self.name,
            audience=self.gcp_audience,
            service_account=self.service_account or None,
            project_id=self.project_id or None,
            project_number=self.project_number or None,
        )


@dataclass(frozen=True)
class GcpNodeIdentity(Identity):
    """The service account of the node the sidecar runs on (`source = "node"`), optionally
    impersonating `service_account` with it. The sidecar asks the node's metadata server for
    its tokens; the issuer mints nothing for it (no audience) and only decides who is granted
    it."""

    provider: ClassVar[str] = "gcp"
    service_account: str | None = None
    project_id: str | None = None

    def grant(self, user_id: str) -> GcpGrant:
        return GcpGrant(
            name=self.name,
            audience="",
            service_account=self.service_account,
            project_id=self.project_id,
            source="node",
        )


@dataclass(frozen=True)
class AzureIdentity(Identity):
    provider: ClassVar[str] = "azure"
    tenant_id: str = ""
    client_id: str = ""
    # Entra federated credentials match one exact subject (at most 20 per identity), so the
    # identity, not the user, is the subject; the issuer enforces which users may use it.
    subject: str = ""
    azure_audience: str = AZURE_AUDIENCE
    object_id: str | None = None
    resource_id: str | None = None

    @property
    def audience(self) -> str:
        return self.azure_audience

    def subject_for(self, user_subject: str) -> str:
        return self.subject

    def grant(self, user_id: str) -> AzureGrant:
        return AzureGrant(
            name=self.name,
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            audience=self.azure_audience,
            object_id=self.object_id or None,
            resource_id=self.resource_id or None,
        )


@dataclass(frozen=True)
class AzureNodeIdentity(Identity):
    """A managed identity of the node the sidecar runs on (`source = "node"`): its
    system-assigned identity (neither selector), or a user-assigned one attached to it, named
    by `client_id` or `mi_res_id`. The sidecar asks the node's IMDS for its tokens; the issuer
    mints nothing for it (no audience) and only decides who is granted it."""

    provider: ClassVar[str] = "azure"
    client_id: str | None = None
    mi_res_id: str | None = None

    def grant(self, user_id: str) -> AzureGrant:
        return AzureGrant(
            name=self.name,
            tenant_id="",
            client_id=self.client_id or "",
            resource_id=self.mi_res_id,
            source="node",
        )


@dataclass(frozen=True)
class HpcCluster(Identity):
    provider: ClassVar[str] = "hpc"
    scheduler: str = "slurm"
    host: str = ""
    port: int = 22
    usernames: Mapping[str, str] = field(default_factory=dict)

    def usable_by(self, user_id: str) -> bool:
        return user_id in self.usernames

    def grant(self, user_id: str) -> HpcGrant:
        username = self.usernames.get(user_id)
        if username is None:  # `usable_by` keeps such users from being granted the cluster
            raise Forbidden(
                f"user {user_id!r} has no Linux username on HPC cluster {self.name!r}; add "
                "one to the cluster's `usernames` in the identity policy"
            )
        return HpcGrant(self.name, self.host, username, self.scheduler, self.port)


class _Fields:
    """Typed access to one identity table that names the offending key when it is wrong."""

    def __init__(self, provider: str, name: str, table: Mapping[str, Any]) -> None:
        self.provider, self.name, self.table = provider, name, table
        self.used: set[str] = set()

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(
            f"{self.provider} identity {self.name!r}: {key} {reason}",
            path=("identities", self.provider, self.name, key),
        )

    def text(
        self,
        key: str,
        pattern: re.Pattern[str] | None = None,
        required: bool = True,
        default: str | None = None,
        hint: str = "",
    ) -> str | None:
        self.used.add(key)
        value = self.table.get(key, default)
        if value is None:
            if required:
                raise self.fail(key, f"is required{hint}")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not valid{hint}")
        return value

    def mapping(self, key: str) -> dict[str, str]:
        self.used.add(key)
        value = self.table.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail(key, "must be a table of string keys and string values")
        return dict(value)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting")


def _source(f: _Fields) -> str:
    source = str(f.text("source", default="federation"))
    if source not in SOURCES:
        raise f.fail("source", f"{source[:40]!r} is not one of {', '.join(SOURCES)}")
    return source


def parse_identity(
    provider: str, name: str, table: Mapping[str, Any], audiences: Mapping[str, str]
) -> Identity:
    """Builds one identity from its `[identities.PROVIDER.NAME]` table."""
    f = _Fields(provider, name, table)
    identity: Identity
    # Where a cloud identity's credentials come from: the issuer's federation, or the node.
    node = provider in ("aws", "gcp", "azure") and _source(f) == "node"
    if provider == "aws" and node:
        role_arn = f.text("role_arn", ROLE_ARN, required=False,
                          hint=" (arn:aws:iam::ACCOUNT:role/NAME)")  # fmt: skip
        session_policy = f.text("session_policy", required=False)
        if session_policy and not role_arn:
            raise f.fail(
                "session_policy",
                "needs role_arn: a session policy narrows the role assumed from the node's "
                "instance profile, and the instance profile's own credentials take none",
            )
        identity = AwsNodeIdentity(name=name, role_arn=role_arn, session_policy=session_policy)
    elif provider == "aws":
        identity = AwsIdentity(
            name=name,
            role_arn=str(f.text("role_arn", ROLE_ARN, hint=" (arn:aws:iam::ACCOUNT:role/NAME)")),
            aws_audience=str(
                f.text("audience", default=audiences.get("aws", AWS_DEFAULT_AUDIENCE))
            ),
            session_tags=f.mapping("session_tags"),
            session_policy=f.text("session_policy", required=False),
        )
    elif provider == "gcp" and node:
        identity = GcpNodeIdentity(
            name=name,
            service_account=f.text("service_account", _EMAIL, required=False),
            project_id=f.text("project_id", required=False),
        )
    elif provider == "gcp":
        identity = GcpIdentity(
            name=name,
            gcp_audience=str(
                f.text("audience", hint=" (the workload identity provider's audience)")
            ),
            service_account=f.text("service_account", _EMAIL, required=False),
            project_id=f.text("project_id", required=False),
            project_number=f.text("project_number", re.compile(r"\d{1,20}"), required=False),
        )
    elif provider == "azure" and node:
        client_id = f.text("client_id", _GUID, required=False, hint=" (a GUID)")
        mi_res_id = f.text("mi_res_id", _MI_RES_ID, required=False, hint=_MI_RES_ID_HINT)
        if client_id and mi_res_id:
            raise f.fail(
                "mi_res_id",
                "cannot be set with client_id: name a user-assigned identity by one of them, "
                "or by neither for the node's system-assigned identity",
            )
        identity = AzureNodeIdentity(name=name, client_id=client_id, mi_res_id=mi_res_id)
    elif provider == "azure":
        identity = AzureIdentity(
            name=name,
            tenant_id=str(f.text("tenant_id", re.compile(f"{_GUID.pattern}|{_DOMAIN.pattern}"))),
            client_id=str(f.text("client_id", _GUID, hint=" (a GUID)")),
            subject=str(f.text("subject", default=azure_default_subject(name))),
            azure_audience=str(f.text("audience", default=audiences.get("azure", AZURE_AUDIENCE))),
            object_id=f.text("object_id", _GUID, required=False),
            resource_id=f.text("resource_id", required=False),
        )
    elif provider == "hpc":
        scheduler = str(f.text("scheduler", default="slurm")).lower()
        if scheduler not in SCHEDULERS:
            raise f.fail(
                "scheduler", f"{scheduler!r} is not one of {', '.join(sorted(SCHEDULERS))}"
            )
        f.used.add("port")
        port = table.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise f.fail("port", "must be an integer between 1 and 65535")
        usernames = f.mapping("usernames")
        for user, linux in usernames.items():
            if not LINUX_USERNAME.fullmatch(linux):
                raise f.fail(
                    "usernames", f"maps {user!r} to {linux!r}, which is not a Linux username"
                )
        identity = HpcCluster(
            name=name,
            scheduler=scheduler,
            host=str(f.text("host", _HOST)),
            port=port,
            usernames=usernames,
        )
    else:
        raise ConfigError(
            f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}",
            path=("identities", provider),
        )
    f.check_unknown()
    return identity
