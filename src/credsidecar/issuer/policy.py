"""The identity policy: who may act as which cloud and HPC identity.

A policy file (TOML) names users, workspaces, identities per provider and grants. A grant gives
users and/or workspace members a list of identities of one provider, with a default; it may be
limited to some pipelines. For one launch (user, workspace, pipeline) the matching grants are
ranked: the user's own pipeline-specific grants, the user's grants, the workspace's
pipeline-specific grants, then the workspace's grants, each in file order. The granted identities
are their union; the default is the first ranked grant's default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credsidecar.errors import ConfigError, Forbidden
from credsidecar.issuer.identities import PROVIDERS, Identity, parse_identity
from credsidecar.issuer.limits import check_source_identity, check_subject
from credsidecar.issuer.toml_errors import line_of, syntax_error_line

__all__ = [
    "RANK_NAMES",
    "Grant",
    "MatchedGrant",
    "Policy",
    "Resolution",
    "User",
    "Workspace",
    "load_policy",
    "parse_policy",
]


@dataclass(frozen=True)
class User:
    id: str
    email: str | None = None
    name: str | None = None
    # The stable subject clouds see (defaults to the id); <= 127 bytes for GCP.
    subject: str = ""
    disabled: bool = False
    # Organization owners manage HPC clusters through the issuer's API.
    owner: bool = False

    @property
    def aws_source_identity(self) -> str:
        return self.id


@dataclass(frozen=True)
class Workspace:
    id: str
    members: frozenset[str]
    name: str | None = None


@dataclass(frozen=True)
class Grant:
    provider: str
    identities: tuple[str, ...]
    default: str
    users: frozenset[str] = frozenset()
    workspaces: frozenset[str] = frozenset()
    pipelines: frozenset[str] | None = None  # None: every pipeline

    def rank(self, user: str, workspace: str | None, pipeline: str | None) -> int | None:
        """Lower is more specific; None when the grant does not apply to this launch."""
        if self.pipelines is not None and pipeline not in self.pipelines:
            return None
        specific = 0 if self.pipelines is not None else 1
        if user in self.users:
            return specific
        if workspace is not None and workspace in self.workspaces:
            return 2 + specific
        return None


# Grant.rank's values, most specific first, as `issuer explain` names them.
RANK_NAMES = (
    "the user's grant for this pipeline",
    "the user's grant",
    "the workspace's grant for this pipeline",
    "the workspace's grant",
)


@dataclass(frozen=True)
class MatchedGrant:
    """One grant that applies to a launch: its rank (0 most specific), its index among the
    policy's [[grants]] (file order breaks ties) and the grant."""

    rank: int
    order: int
    grant: Grant

    @property
    def basis(self) -> str:
        return RANK_NAMES[self.rank]


@dataclass(frozen=True)
class Resolution:
    """What the policy gives one launch for one provider."""

    matches: tuple[MatchedGrant, ...]  # ranked; the first one's default is the default
    identities: tuple[Identity, ...]  # the default first
    unusable: tuple[str, ...] = ()  # granted, but not usable by this user (an unmapped cluster)


@dataclass(frozen=True)
class Policy:
    users: Mapping[str, User]
    workspaces: Mapping[str, Workspace]
    identities: Mapping[str, Mapping[str, Identity]]  # provider -> name -> identity
    grants: tuple[Grant, ...]

    def user(self, user_id: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise Forbidden(
                f"user {user_id!r} is not in the identity policy; add a [[users]] entry"
            )
        return user

    def check_membership(self, user_id: str, workspace: str | None) -> None:
        if workspace is None:
            return
        ws = self.workspaces.get(workspace)
        if ws is None:
            raise Forbidden(
                f"workspace {workspace!r} is not in the identity policy; add a [[workspaces]] "
                "entry, or launch outside a workspace"
            )
        if user_id not in ws.members:
            raise Forbidden(
                f"user {user_id!r} is not a member of workspace {workspace!r}; add them to its "
                "`members` in the identity policy"
            )

    def matching_grants(
        self, user_id: str, workspace: str | None, pipeline: str | None, provider: str
    ) -> Resolution:
        """The grants of `provider` that apply to this launch, ranked (see the module
        docstring), and the identities they give, the default first. Minting, exchanging and
        `issuer explain` all ask this one function."""
        ranked = sorted(
            (rank, order, grant)
            for order, grant in enumerate(self.grants)
            if grant.provider == provider
            and (rank := grant.rank(user_id, workspace, pipeline)) is not None
        )
        names: list[str] = []
        for _, _, grant in ranked:
            if not names:
                names.append(grant.default)
            names.extend(n for n in grant.identities if n not in names)
        catalogue = self.identities.get(provider, {})
        return Resolution(
            matches=tuple(MatchedGrant(rank, order, grant) for rank, order, grant in ranked),
            identities=tuple(catalogue[n] for n in names if catalogue[n].usable_by(user_id)),
            unusable=tuple(n for n in names if not catalogue[n].usable_by(user_id)),
        )

    def granted(
        self, user_id: str, workspace: str | None, pipeline: str | None, provider: str
    ) -> list[Identity]:
        """Identities of `provider` this launch may use, the default first."""
        return list(self.matching_grants(user_id, workspace, pipeline, provider).identities)

    def workspaces_of(self, user_id: str) -> list[str]:
        return [ws.id for ws in self.workspaces.values() if user_id in ws.members]


def _strings(value: Any, where: tuple[str | int, ...], what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of non-empty strings", path=where)
    return list(value)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: tuple[str | int, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{key!r} is not a known setting here (known: {', '.join(sorted(allowed))})",
                path=(*where, key),
            )


def _parse(data: Mapping[str, Any]) -> Policy:
    _check_keys(data, {"providers", "users", "workspaces", "identities", "grants"}, ())
    audiences: dict[str, str] = {}
    for provider, settings in data.get("providers", {}).items():
        if provider not in PROVIDERS:
            raise ConfigError(f"unknown provider {provider!r}", path=("providers", provider))
        _check_keys(settings, {"audience"}, ("providers", provider))
        if "audience" in settings:
            audiences[provider] = str(settings["audience"])

    users: dict[str, User] = {}
    for i, row in enumerate(data.get("users", [])):
        _check_keys(row, {"id", "email", "name", "subject", "disabled", "owner"}, ("users", i))
        uid = row.get("id")
        if not isinstance(uid, str) or not uid:
            raise ConfigError("every user needs an `id`", path=("users", i))
        if uid in users:
            raise ConfigError(f"user {uid!r} is defined twice", path=("users", i, "id"))
        user = User(
            id=uid,
            email=row.get("email"),
            name=row.get("name"),
            subject=row.get("subject", uid),
            disabled=bool(row.get("disabled", False)),
            owner=bool(row.get("owner", False)),
        )
        try:
            check_subject(user.subject)
            check_source_identity(user.aws_source_identity)
        except Exception as exc:
            raise ConfigError(f"user {uid!r}: {exc}", path=("users", i, "id")) from exc
        users[uid] = user

    workspaces: dict[str, Workspace] = {}
    for i, row in enumerate(data.get("workspaces", [])):
        _check_keys(row, {"id", "name", "members"}, ("workspaces", i))
        wid = row.get("id")
        if not isinstance(wid, str) or not wid:
            raise ConfigError("every workspace needs an `id`", path=("workspaces", i))
        members = _strings(row.get("members", []), ("workspaces", i, "members"), "members")
        for member in members:
            if member not in users:
                raise ConfigError(
                    f"workspace {wid!r} lists unknown user {member!r}",
                    path=("workspaces", i, "members"),
                )
        workspaces[wid] = Workspace(id=wid, members=frozenset(members), name=row.get("name"))

    identities: dict[str, dict[str, Identity]] = {p: {} for p in PROVIDERS}
    for provider, table in data.get("identities", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"identities.{provider} must be a table", path=("identities",))
        for name, settings in table.items():
            identity = parse_identity(provider, name, settings, audiences)
            identities[provider][name] = identity
            for user in getattr(identity, "usernames", {}):
                if user not in users:
                    raise ConfigError(
                        f"hpc cluster {name!r} maps unknown user {user!r}",
                        path=("identities", provider, name, "usernames"),
                    )

    grants: list[Grant] = []
    for i, row in enumerate(data.get("grants", [])):
        where: tuple[str | int, ...] = ("grants", i)
        _check_keys(
            row, {"users", "workspaces", "provider", "identities", "default", "pipelines"}, where
        )
        provider = row.get("provider")
        if provider not in PROVIDERS:
            raise ConfigError(
                f"grant needs `provider`, one of {', '.join(PROVIDERS)}", path=(*where, "provider")
            )
        names = _strings(row.get("identities"), (*where, "identities"), "identities")
        for name in names:
            if name not in identities[provider]:
                raise ConfigError(
                    f"grant names unknown {provider} identity {name!r}", path=(*where, "identities")
                )
        default = row.get("default", names[0] if names else None)
        if default not in names:
            raise ConfigError(
                f"default {default!r} must be one of the grant's identities",
                path=(*where, "default"),
            )
        grant_users = _strings(row.get("users", []), (*where, "users"), "users")
        grant_ws = _strings(row.get("workspaces", []), (*where, "workspaces"), "workspaces")
        if not grant_users and not grant_ws:
            raise ConfigError("grant must name `users` or `workspaces`", path=where)
        for uid in grant_users:
            if uid not in users:
                raise ConfigError(f"grant names unknown user {uid!r}", path=(*where, "users"))
        for wid in grant_ws:
            if wid not in workspaces:
                raise ConfigError(
                    f"grant names unknown workspace {wid!r}", path=(*where, "workspaces")
                )
        pipelines = row.get("pipelines")
        grants.append(
            Grant(
                provider=provider,
                identities=tuple(names),
                default=str(default),
                users=frozenset(grant_users),
                workspaces=frozenset(grant_ws),
                pipelines=None
                if pipelines is None
                else frozenset(_strings(pipelines, (*where, "pipelines"), "pipelines")),
            )
        )
    return Policy(users=users, workspaces=workspaces, identities=identities, grants=tuple(grants))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parses policy text; any error names `source`, the line and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = syntax_error_line(str(exc))
        raise ConfigError(f"{source}:{line or '?'}: {exc}") from exc
    try:
        return _parse(data)
    except ConfigError as exc:
        line = line_of(text, exc.path) if exc.path else None
        raise ConfigError(f"{source}:{line or '?'}: {exc.message}", path=exc.path) from exc
    except (TypeError, AttributeError, ValueError) as exc:
        # A value of the wrong shape (a string where a table belongs) lands here.
        raise ConfigError(f"{source}: a value has the wrong type: {exc}") from exc


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    return parse_policy(text, str(path))
