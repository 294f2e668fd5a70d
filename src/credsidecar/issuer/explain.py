"""`credsidecar issuer explain`: which identities a launch would get per provider, and why.

For a user (and optionally a workspace and a pipeline) it shows, per provider, the grants that
matched in the order the issuer ranks them (the user's pipeline grants, the user's grants, the
workspace's pipeline grants, the workspace's grants; file order within a rank), which identity
is the default, and the identities a launch would carry; or why there are none: the user is not
in the policy, is disabled (in the policy or by an administrator), is not a member of the
workspace, no grant names them, a grant applies only to other pipelines, or a granted HPC
cluster maps no Linux username for them.

It asks the same functions a mint does (`IssuerService.check_user_active`,
`Policy.check_membership`, `Policy.matching_grants`): nothing here ranks grants itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from credsidecar.errors import Forbidden
from credsidecar.issuer.identities import PROVIDERS
from credsidecar.issuer.policy import Grant, MatchedGrant, Policy
from credsidecar.issuer.service import IssuerService

__all__ = ["Explanation", "GrantLine", "ProviderExplanation", "explain", "render"]


@dataclass(frozen=True)
class GrantLine:
    """One matched grant: where it is in the policy, why it applies, what it gives."""

    position: int  # 1 = the most specific; its default is the launch's default
    basis: str  # "the user's grant", "the workspace's grant for this pipeline", ...
    grant: int  # 1-based index among the policy's [[grants]]
    names: str  # "users alice", "workspaces genomics"
    pipelines: list[str] | None
    identities: list[str]
    default: str


@dataclass(frozen=True)
class ProviderExplanation:
    provider: str
    identities: list[str]  # what a launch carries, the default first
    default: str | None
    grants: list[GrantLine] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    why_none: str | None = None


@dataclass(frozen=True)
class Explanation:
    user: str
    workspace: str | None
    pipeline: str | None
    refused: str | None  # why a launch would be refused outright (then no provider matters)
    providers: list[ProviderExplanation]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _names(grant: Grant) -> str:
    parts = []
    if grant.users:
        parts.append("users " + ", ".join(sorted(grant.users)))
    if grant.workspaces:
        parts.append("workspaces " + ", ".join(sorted(grant.workspaces)))
    return "; ".join(parts)


def _line(position: int, match: MatchedGrant) -> GrantLine:
    grant = match.grant
    return GrantLine(
        position=position,
        basis=match.basis,
        grant=match.order + 1,
        names=_names(grant),
        pipelines=sorted(grant.pipelines) if grant.pipelines is not None else None,
        identities=list(grant.identities),
        default=grant.default,
    )


def _why_none(
    policy: Policy, user: str, workspace: str | None, pipeline: str | None, provider: str
) -> str:
    """Why no grant of `provider` matched, with the nearest misses (asked of the same ranking:
    a grant that would match in another of the user's workspaces, or for another pipeline)."""
    misses = []
    for order, grant in enumerate(policy.grants):
        if grant.provider != provider:
            continue
        elsewhere = [
            ws
            for ws in policy.workspaces_of(user)
            if ws != workspace and grant.rank(user, ws, pipeline) is not None
        ]
        if elsewhere:
            which = ", ".join(elsewhere)
            misses.append(f"[[grants]] #{order + 1} applies in workspace {which} (--workspace)")
        elif grant.pipelines is not None and any(
            grant.rank(user, workspace, other) is not None for other in grant.pipelines
        ):
            which = ", ".join(sorted(grant.pipelines))
            misses.append(f"[[grants]] #{order + 1} applies only to pipelines {which}")
    where = f" or workspace {workspace!r}" if workspace else " (outside any workspace)"
    text = f'no [[grants]] entry with provider = "{provider}" names user {user!r}{where}'
    if pipeline:
        text += f" for pipeline {pipeline!r}"
    return text + (": " + "; ".join(misses) if misses else "")


def _provider(
    policy: Policy, user: str, workspace: str | None, pipeline: str | None, provider: str
) -> ProviderExplanation:
    resolution = policy.matching_grants(user, workspace, pipeline, provider)
    names = [i.name for i in resolution.identities]
    lines = [_line(n, match) for n, match in enumerate(resolution.matches, 1)]
    why = None
    if not resolution.matches:
        why = _why_none(policy, user, workspace, pipeline, provider)
    elif not names:
        why = (
            f"the matching grants give {', '.join(resolution.unusable)}, but no Linux username "
            f"is mapped there for {user!r}; add one to the cluster's `usernames`"
        )
    return ProviderExplanation(
        provider=provider,
        identities=names,
        default=names[0] if names else None,
        grants=lines,
        unusable=list(resolution.unusable),
        why_none=why,
    )


def explain(
    service: IssuerService, user: str, workspace: str | None = None, pipeline: str | None = None
) -> Explanation:
    """What a launch for (user, workspace, pipeline) would get, as minting decides it."""
    policy = service.policy
    refused: str | None = None
    try:
        service.check_user_active(user)
        policy.check_membership(user, workspace)
    except Forbidden as exc:
        refused = exc.message
    known = user in policy.users  # an unknown user: the refusal says all there is to say
    providers = [_provider(policy, user, workspace, pipeline, p) for p in PROVIDERS if known]
    if refused is None and not any(p.identities for p in providers):  # as mint refuses
        where = f" in workspace {workspace!r}" if workspace else ""
        refused = (
            f"user {user!r} has no identity granted{where}, so the issuer refuses to mint a "
            "launch token; add a [[grants]] entry for them or their workspace"
        )
    return Explanation(user, workspace, pipeline, refused, providers)


def render(result: Explanation) -> str:
    """The explanation as text: one block per provider, the ranked grants under it."""
    head = f"user {result.user}"
    head += f", workspace {result.workspace}" if result.workspace else ", no workspace"
    head += f", pipeline {result.pipeline}" if result.pipeline else ", any pipeline"
    lines = [head]
    if result.refused:
        lines.append(f"a launch is refused: {result.refused}")
        if any(p.identities for p in result.providers):
            lines.append("(once that is fixed, the grants below apply)")
    width = max(len(p) for p in PROVIDERS)
    for p in result.providers:
        if p.identities:
            rest = [n for n in p.identities if n != p.default]
            got = f"{p.default} (default)" + "".join(f", {n}" for n in rest)
        else:
            got = f"none: {p.why_none}"
        lines.append(f"{p.provider.ljust(width)}  {got}")
        for g in p.grants:
            only = f", pipelines {', '.join(g.pipelines)}" if g.pipelines is not None else ""
            decides = g.position == 1 and (len(g.identities) > 1 or len(p.grants) > 1)
            first = f"; its default {g.default} is the launch's default" if decides else ""
            lines.append(
                f"{'':{width}}    {g.position}. [[grants]] #{g.grant}, {g.basis} "
                f"({g.names}{only}): {', '.join(g.identities)}{first}"
            )
        if p.unusable and p.identities:
            lines.append(
                f"{'':{width}}    not usable by {result.user} (no Linux username mapped): "
                + ", ".join(p.unusable)
            )
    return "\n".join(lines)
