"""A credential source and checks that answer from tables: what test_run.py and test_report.py
hand to `Preflight`, as httpx's MockTransport stands in for the network."""

from __future__ import annotations

from dataclasses import dataclass, field

from credsidecar.errors import Forbidden
from credsidecar.preflight.credentials import CloudIdentity, Obtained
from credsidecar.preflight.model import Access, Outcome, Target, Verdict
from credsidecar.preflight.run import Check

READ = frozenset({Access.READ})
WRITE = frozenset({Access.WRITE})
ALICE_ROLE = "arn:aws:iam::123456789012:role/alice-data"
WORKSPACE_ROLE = "arn:aws:iam::123456789012:role/genomics-readonly"


def target(uri: str, cloud: str = "aws", access: frozenset[Access] = READ) -> Target:
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    return Target(uri, cloud, bucket, None, prefix, access)


def role(label: str, name: str, default: bool) -> CloudIdentity:
    return CloudIdentity("aws", label, name, default, f"select {name}")


@dataclass
class TableSource:
    """Identities per cloud (the default first); `refuse` maps a label to a refusal cause."""

    identities: dict[str, list[CloudIdentity]]
    refuse: dict[str, str] = field(default_factory=dict)
    user: str | None = "alice"
    run: str | None = "r1"
    where: str = "before launch, from a table"
    obtained: list[str] = field(default_factory=list)  # labels, once per fetch

    def default(self, cloud: str) -> CloudIdentity | None:
        found = self.identities.get(cloud, [])
        return found[0] if found else None

    async def others(self, cloud: str) -> list[CloudIdentity]:
        return self.identities.get(cloud, [])[1:]

    async def obtain(self, identity: CloudIdentity) -> Obtained:
        self.obtained.append(identity.label)
        if identity.label in self.refuse:
            raise Forbidden(self.refuse[identity.label])
        return Obtained(identity, token=f"token-of-{identity.label}")


def table_check(allowed: dict[str, set[str]], missing: str = "s3:ListBucket") -> Check:
    """A check passing the URIs listed for an identity's label, denying the others."""

    async def check(t: Target, got: Obtained) -> Verdict:
        label = got.identity.label
        if t.uri in allowed.get(label, set()):
            return Verdict(t, Outcome.OK, label)
        return Verdict(t, Outcome.DENIED, label, (missing,), "AccessDenied")

    return check
