"""The preflight report: a table (path, access, verdict, identity), one sentence per failure,
the same as JSON, and the exit status.

Each failure's sentence names who (the launching user when known), the cloud identity, the
resource in the cloud's terms, the exact permissions missing, whether another identity granted
to the launch would work (and how to select it), and who to ask. Naming a contact from the
issuer's policy (a data steward per bucket) is left for later: the sentences say "your AWS
administrator" and so on.

Exit status: 0 when every path is fine; 1 when some path is denied or missing (a definite
problem, even if others could not be checked); 2 when nothing is denied but some path could
not be checked (not reachable, no credentials, not checkable here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from credsidecar.preflight.credentials import CLOUD_NAMES, CloudIdentity
from credsidecar.preflight.model import Access, Outcome, Target, Verdict
from credsidecar.preflight.run import Finding, Report

__all__ = ["exit_code", "render_json", "render_text", "sentence"]

_ORDER = (Access.READ, Access.WRITE, Access.DELETE)
_DEFINITE = frozenset({Outcome.DENIED, Outcome.NOT_FOUND})
_UNCHECKED = frozenset({Outcome.UNREACHABLE, Outcome.NO_CREDENTIALS})
# Azure's built-in data roles, the least that grants what is missing.
_AZURE_READER = "Storage Blob Data Reader"
_AZURE_CONTRIBUTOR = "Storage Blob Data Contributor"


def exit_code(report: Report) -> int:
    outcomes = {f.verdict.outcome for f in report.findings}
    if outcomes & _DEFINITE:
        return 1
    if outcomes & _UNCHECKED:
        return 2
    return 0


def access_text(access: Iterable[Access]) -> str:
    wanted = set(access)
    return "+".join(a.value for a in _ORDER if a in wanted)


def _words(items: Iterable[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _verdict_text(verdict: Verdict) -> str:
    text = verdict.outcome.value
    if verdict.unverified:
        text += f" ({access_text(verdict.unverified)} not verified)"
    return text


# sentences ---------------------------------------------------------------------------------------


def _who(report: Report) -> str:
    if report.user:
        return f"user {report.user}" + (f" (run {report.run})" if report.run else "")
    return "this job"


def _kind(cloud: str, label: str, identity: CloudIdentity | None = None) -> str:
    """How a sentence names the identity: 'role ARN', 'service account EMAIL', 'managed
    identity NAME (client id ID)'."""
    if label.startswith("the job's") or label == "none" or cloud == "hpc":
        return label
    if cloud == "azure":
        name = identity.name if identity is not None else None
        if name and name != label:
            return f"managed identity {name} (client id {label})"
        return f"the managed identity with client id {label}"
    kind = {"aws": "role", "gcp": "service account", "hpc": "account"}.get(cloud, "identity")
    return f"{kind} {label}"


def _verbs(target: Target, missing: tuple[str, ...]) -> str:
    found = []
    for permission in missing:
        lower = permission.lower()
        if target.cloud == "hpc":
            # Besides plain read access, what a cluster work dir lacks (write permission,
            # setgid, a group default ACL) is what writing results for the group needs.
            found.append(Access.READ if lower == "read permission" else Access.WRITE)
        elif "delete" in lower:
            found.append(Access.DELETE)
        elif any(word in lower for word in ("put", "create", "write")):
            found.append(Access.WRITE)
        else:
            found.append(Access.READ)
    chosen = set(found) or set(target.access)
    return _words([a.value for a in _ORDER if a in chosen])


def _s3_resources(target: Target, missing: tuple[str, ...]) -> list[tuple[list[str], str]]:
    """(permissions, ARN) pairs: bucket-level permissions on the bucket, the others on keys."""
    bucket = f"arn:aws:s3:::{target.location}"
    on_bucket = [p for p in missing if p.lower() in ("s3:listbucket", "s3:getbucketlocation")]
    on_keys = [p for p in missing if p not in on_bucket]
    pairs = []
    if on_bucket:
        where = f" (prefix {target.prefix})" if target.prefix else ""
        pairs.append((on_bucket, f"{bucket}{where}"))
    if on_keys:
        pairs.append((on_keys, f"{bucket}/{target.prefix}*"))
    return pairs


def _resource(target: Target) -> str:
    if target.cloud == "aws":
        return f"arn:aws:s3:::{target.location}"
    if target.cloud == "gcp":
        return f"bucket {target.location}"
    if target.cloud == "azure":
        return f"container {target.container} of storage account {target.location}"
    return f"{target.prefix} on cluster {target.location}"


def _missing_clause(target: Target, missing: tuple[str, ...]) -> str:
    if not missing:
        return f"access to {_resource(target)} was refused"
    if target.cloud == "aws":
        parts = [f"{_words(perms)} on {arn}" for perms, arn in _s3_resources(target, missing)]
        return f"it lacks {_words(parts)}"
    return f"it lacks {_words(missing)} on {_resource(target)}"


def _ask(target: Target, verdict: Verdict) -> str:
    cloud = CLOUD_NAMES.get(target.cloud, target.cloud)
    missing, identity = verdict.missing, verdict.identity
    perms = _words(missing) or "access"
    if target.cloud == "aws":
        grants = _words(f"{_words(p)} on {arn}" for p, arn in _s3_resources(target, missing))
        role = identity.rsplit("/", 1)[-1] if identity.startswith("arn:") else identity
        return f"ask your AWS administrator to grant {grants or perms} to role {role}"
    if target.cloud == "gcp":
        writes = any(w in p for p in missing for w in ("create", "delete"))
        role = "roles/storage.objectUser" if writes else "roles/storage.objectViewer"
        return (f"ask your GCP administrator to grant {perms} on bucket {target.location} to "
                f"{identity} (e.g. with {role})")  # fmt: skip
    if target.cloud == "azure":
        writes = any(w in p.lower() for p in missing for w in ("write", "delete", "add"))
        role = _AZURE_CONTRIBUTOR if writes else _AZURE_READER
        return (f"ask your Azure administrator to assign {role} (it grants {perms}) on "
                f"{_resource(target)} to the managed identity with client id "
                f"{identity}")  # fmt: skip
    return f"ask the administrators of {cloud} cluster {target.location} for {perms}"


def _would_work(finding: Finding) -> str:
    """'AWS identity NAME (ARN), also granted to this launch, would work: HOW'."""
    cloud = CLOUD_NAMES.get(finding.verdict.target.cloud, finding.verdict.target.cloud)
    first: CloudIdentity = finding.alternatives[0]
    name = f"{first.name} ({first.label})" if first.name else first.label
    more = [i.name or i.label for i in finding.alternatives[1:]]
    also = f" (so would {_words(more)})" if more else ""
    return f"{cloud} identity {name}, also granted to this launch, would work{also}: {first.select}"


def _alternatives_clause(finding: Finding, report: Report) -> str:
    cloud = CLOUD_NAMES.get(finding.verdict.target.cloud, finding.verdict.target.cloud)
    if finding.verdict.target.cloud == "hpc":
        return ""  # one account per cluster: there is no other identity to try
    if finding.alternatives:
        return f"{_would_work(finding)}; otherwise "
    if finding.others_checked:
        tried = _words(i.name or i.label for i in finding.others_checked)
        return f"no other {cloud} identity granted to this launch would work either ({tried}); "
    if report.job and finding.verdict.target.cloud in ("aws", "gcp"):
        return ""  # the job sees one AWS role and one GCP account: the footer says so
    return f"no other {cloud} identity is granted to this launch; "


def sentence(finding: Finding, report: Report) -> str | None:
    """The one sentence for a failure; None for a path that is fine."""
    v = finding.verdict
    t = v.target
    who, cloud = _who(report), CLOUD_NAMES.get(t.cloud, t.cloud)
    as_whom = _kind(t.cloud, v.identity, finding.identity)
    # The cloud's own words: the cause when there is no exact permission to name (the JSON
    # report always carries them).
    detail = f" ({v.detail})" if v.detail else ""
    if v.outcome is Outcome.OK:
        return None
    if v.outcome is Outcome.DENIED:
        head = f"{who.capitalize()} cannot {_verbs(t, v.missing)} {t.uri} as {as_whom}: "
        head += _missing_clause(t, v.missing) + ("" if v.missing else detail) + "; "
        return head + _alternatives_clause(finding, report) + _ask(t, v) + "."
    if v.outcome is Outcome.NOT_FOUND and t.cloud == "hpc":  # the cluster or the directory
        return (f"{t.uri} was not found by {who} as {as_whom}: {v.detail or 'no such directory'};"
                " check the name, or ask the cluster's owner.")  # fmt: skip
    if v.outcome is Outcome.NOT_FOUND:
        thing = {
            "aws": f"S3 bucket {t.location}",
            "gcp": f"Cloud Storage bucket {t.location}",
            "azure": f"container {t.container} of storage account {t.location}",
        }.get(t.cloud, f"{t.prefix} on cluster {t.location}")
        return (f"{t.uri} was not found by {who} as {as_whom}: {thing} does not exist; "
                "check the name, or ask its owner to create it.")  # fmt: skip
    if v.outcome is Outcome.NO_CREDENTIALS:
        if v.identity == "none":
            return f"{t.uri} could not be checked: {who} has no {cloud} identity: {v.detail}."
        head = f"{t.uri} could not be checked: {who} got no {cloud} credentials as {as_whom}"
        tail = f"; {_would_work(finding)}" if finding.alternatives else ""
        return f"{head}{detail}{tail}."
    return (
        f"{t.uri} could not be checked as {as_whom}: {cloud} did not answer or could not be "
        f"asked{detail}; check the endpoint and the network, then run preflight again."
    )


# rendering ---------------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    rows = [("PATH", "ACCESS", "VERDICT", "IDENTITY")]
    for f in report.findings:
        v = f.verdict
        rows.append((v.target.uri, access_text(v.target.access), _verdict_text(v), v.identity))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"credsidecar preflight {report.where}", ""]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
    failures = [(f, sentence(f, report)) for f in report.findings]
    said = [text for _, text in failures if text]
    if said:
        lines += ["", f"{len(said)} of {len(report.findings)} paths failed:"]
        lines += [f"- {text}" for text in said]
    unverified = [f.verdict.target.uri for f in report.findings if f.verdict.unverified]
    if unverified:
        lines += ["", f"Write access was not verified (--no-write-probe) for {_words(unverified)}."]
    if report.job and any(
        f.verdict.outcome in _DEFINITE and f.verdict.target.cloud in ("aws", "gcp")
        for f in report.findings
    ):
        lines += ["", "Inside the job only the sidecar's AWS role and GCP service account are "
                  "visible; run preflight before launch (--token-file) to check the launch's "
                  "other AWS and GCP identities."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _finding_json(finding: Finding, report: Report) -> dict[str, Any]:
    v = finding.verdict
    t = v.target
    return {
        "path": t.uri,
        "cloud": t.cloud,
        "location": t.location,
        "container": t.container,
        "prefix": t.prefix,
        "access": [a.value for a in _ORDER if a in t.access],
        "verdict": v.outcome.value,
        "identity": v.identity,
        "missing": list(v.missing),
        "detail": v.detail,
        "unverified": [a.value for a in v.unverified],
        "alternatives": [
            {"identity": i.label, "name": i.name, "select": i.select} for i in finding.alternatives
        ],
        "message": sentence(finding, report),
    }


def render_json(report: Report) -> str:
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.verdict.outcome.value] = counts.get(f.verdict.outcome.value, 0) + 1
    body = {
        "where": report.where,
        "user": report.user,
        "run": report.run,
        "write_probe": report.write_probe,
        "exit_code": exit_code(report),
        "summary": counts,
        "paths": [_finding_json(f, report) for f in report.findings],
    }
    return json.dumps(body, indent=2) + "\n"
