"""`credsidecar hpc check`: is a work directory set up the way shared-group sites require?

Runs one read-only shell script over SSH as the user and judges its output here:
- the directory exists and is group-owned by the shared group (`--group`, else its own group);
- directories are setgid, so new entries inherit that group;
- a default ACL gives the group read, write and execute on new entries (and the default mask
  does not take it away);
- the user is in the group;
- the scheduler's commands are on the PATH of a non-interactive login, where jobs are submitted.

Each failure comes with the command that fixes it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SCHEDULER_COMMANDS", "Finding", "evaluate", "probe_script"]

SCHEDULER_COMMANDS: Mapping[str, tuple[str, ...]] = {
    "slurm": ("sbatch", "squeue", "scancel"),
    "lsf": ("bsub", "bjobs", "bkill"),
    "pbs": ("qsub", "qstat", "qdel"),
    "pbspro": ("qsub", "qstat", "qdel"),
    "torque": ("qsub", "qstat", "qdel"),
    "sge": ("qsub", "qstat", "qdel"),
    "uge": ("qsub", "qstat", "qdel"),
    "moab": ("msub", "showq", "canceljob"),
    "htcondor": ("condor_submit", "condor_q", "condor_rm"),
}


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str | None = None  # a shell command that fixes it
    advice: str | None = None  # what to do, when no one command does


def probe_script(directory: str, scheduler: str) -> str:
    """A POSIX shell script that prints `key=value` facts and changes nothing."""
    commands = " ".join(SCHEDULER_COMMANDS.get(scheduler, ()))
    d = shlex.quote(directory)
    return f"""
d={d}
echo "user=$(id -un)"
echo "groups=$(id -Gn)"
for c in {commands}; do
  if command -v "$c" >/dev/null 2>&1; then echo "cmd=$c:yes"; else echo "cmd=$c:no"; fi
done
if [ ! -d "$d" ]; then echo "exists=no"; exit 0; fi
echo "exists=yes"
echo "group=$(stat -c %G "$d")"
echo "mode=$(stat -c %a "$d")"
if command -v getfacl >/dev/null 2>&1; then
  echo "getfacl=yes"
  getfacl -p "$d" 2>/dev/null | sed -n 's/^default:/acl=default:/p'
else
  echo "getfacl=no"
fi
"""


def _facts(output: str) -> tuple[dict[str, str], list[str], dict[str, bool]]:
    facts: dict[str, str] = {}
    acl: list[str] = []
    commands: dict[str, bool] = {}
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "acl":
            acl.append(value.split("#")[0].strip())  # drop getfacl's "#effective:" notes
        elif key == "cmd":
            name, _, present = value.rpartition(":")
            commands[name] = present == "yes"
        elif key:
            facts[key] = value.strip()
    return facts, acl, commands


def _default_acl_allows(acl: Sequence[str], group: str) -> bool:
    entries = {e.rsplit(":", 1)[0]: e.rsplit(":", 1)[1] for e in acl if e.count(":") >= 2}
    granted = entries.get(f"default:group:{group}") or entries.get("default:group:")
    mask = entries.get("default:mask:", "rwx")
    # A named group entry is limited by the mask; the owning group's entry is too once a mask
    # exists. Either way both must allow rwx.
    return bool(granted) and granted == "rwx" and mask == "rwx"


def evaluate(output: str, directory: str, group: str | None, scheduler: str) -> list[Finding]:
    facts, acl, commands = _facts(output)
    d = shlex.quote(directory)
    user = facts.get("user", "?")
    findings: list[Finding] = []
    if facts.get("exists") != "yes":
        findings.append(
            Finding(
                "directory",
                False,
                f"{directory} does not exist or is not a directory",
                f"mkdir -p {d}",
            )
        )
        return findings + _scheduler_findings(commands, scheduler)
    shared = group or facts.get("group", "")
    g = shlex.quote(shared)
    actual = facts.get("group", "?")
    if actual == shared:
        findings.append(Finding("group", True, f"{directory} is group-owned by {shared}"))
    else:
        findings.append(
            Finding(
                "group",
                False,
                f"{directory} is group-owned by {actual}, not the shared group {shared}",
                f"chgrp -R {g} {d}",
            )
        )
    mode = int(facts.get("mode", "0"), 8)
    if mode & 0o2000:
        findings.append(
            Finding("setgid", True, f"{directory} is setgid: new entries get its group")
        )
    else:
        findings.append(
            Finding(
                "setgid",
                False,
                f"{directory} is not setgid, so new files get their creator's primary group",
                f"chmod g+s {d} && find {d} -type d -exec chmod g+s {{}} +",
            )
        )
    if facts.get("getfacl") != "yes":
        findings.append(
            Finding(
                "default ACL",
                False,
                "getfacl is not installed on the login node, so the default ACL cannot be checked",
                advice="ask the cluster admins to install the acl package",
            )
        )
    elif _default_acl_allows(acl, shared):
        findings.append(
            Finding("default ACL", True, f"the default ACL gives {shared} rwx on new entries")
        )
    else:
        shown = ", ".join(acl) or "none"
        findings.append(
            Finding(
                "default ACL",
                False,
                f"the default ACL does not give {shared} "
                f"rwx on new entries (default entries: {shown})",
                f"setfacl -R -d -m g:{g}:rwx,m::rwx {d}",
            )
        )
    groups = facts.get("groups", "").split()
    if shared in groups:
        findings.append(Finding("membership", True, f"{user} is in {shared}"))
    else:
        findings.append(
            Finding(
                "membership",
                False,
                f"{user} is not in {shared} (groups: {' '.join(groups) or 'none'})",
                f"usermod -aG {g} {shlex.quote(user)}  # as root; then log in again",
            )
        )
    return findings + _scheduler_findings(commands, scheduler)


def _scheduler_findings(commands: Mapping[str, bool], scheduler: str) -> list[Finding]:
    wanted = SCHEDULER_COMMANDS.get(scheduler, ())
    if not wanted:
        return [
            Finding(
                "scheduler", True, f"no commands known for scheduler {scheduler!r}; not checked"
            )
        ]
    missing = [c for c in wanted if not commands.get(c)]
    if not missing:
        return [
            Finding("scheduler", True, f"{scheduler} commands on the PATH: {', '.join(wanted)}")
        ]
    return [
        Finding(
            "scheduler",
            False,
            f"{scheduler} commands missing from the PATH of a "
            f"non-interactive login: {', '.join(missing)}",
            advice="add the scheduler's bin directory to PATH where non-interactive shells "
            "read it (~/.bashrc, before any early return for non-interactive shells), "
            f"or `module load {scheduler}` there",
        )
    ]
