"""`credsidecar issuer status`: a users x providers table, like a managed-identity screen, and
the members x clusters table of HPC (`hpc_status_table`, rows from HpcService.status).

Each cell shows the identity a user gets by default (across their own grants and their
workspaces' grants) and how many more they may select; "missing" marks a provider where the user
has no usable identity, "disabled" a user who cannot launch at all.
"""

from __future__ import annotations

from credsidecar.issuer.identities import PROVIDERS
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.store import Store

__all__ = ["MISSING", "hpc_status_table", "status_rows", "status_table"]

MISSING = "missing"


def status_rows(policy: Policy, store: Store | None = None) -> list[dict[str, str]]:
    rows = []
    for user in policy.users.values():
        row = {"user": user.id}
        disabled = user.disabled or (store is not None and store.user_disabled(user.id) is not None)
        for provider in PROVIDERS:
            names: list[str] = []
            # Outside any workspace, then in each of the user's workspaces, pipeline-agnostic.
            for workspace in [None, *policy.workspaces_of(user.id)]:
                for identity in policy.granted(user.id, workspace, None, provider):
                    if identity.name not in names:
                        names.append(identity.name)
            if disabled:
                row[provider] = "disabled"
            elif not names:
                row[provider] = MISSING
            else:
                more = f" (+{len(names) - 1})" if len(names) > 1 else ""
                row[provider] = names[0] + more
        rows.append(row)
    return rows


def status_table(policy: Policy, store: Store | None = None) -> str:
    rows = status_rows(policy, store)
    headers = ["user", *PROVIDERS]
    widths = [max(len(h), *(len(r[h]) for r in rows)) if rows else len(h) for h in headers]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(row[h].ljust(w) for h, w in zip(headers, widths, strict=True)))
    missing = sum(1 for r in rows for p in PROVIDERS if r[p] == MISSING)
    lines.append(f"{len(rows)} users, {missing} user/provider pairs without a usable identity")
    return "\n".join(line.rstrip() for line in lines)


def hpc_status_table(rows: list[dict[str, str]]) -> str:
    """Members x clusters, like `credsidecar issuer status` for the clouds."""
    clusters = sorted({k for r in rows for k in r if k != "user"})
    if not clusters:
        return "no HPC clusters yet (`credsidecar hpc cluster add`)"
    headers = ["user", *clusters]
    widths = [max([len(h)] + [len(r.get(h, "")) for r in rows]) for h in headers]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append(
            "  ".join(row.get(h, "").ljust(w) for h, w in zip(headers, widths, strict=True))
        )
    missing = sum(1 for r in rows for c in clusters if r.get(c) == MISSING)
    lines.append(f"{len(rows)} members, {missing} member/cluster pairs without a way in")
    return "\n".join(line.rstrip() for line in lines)
