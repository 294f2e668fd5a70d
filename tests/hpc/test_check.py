"""The work-directory preflight judged from the probe's output (no SSH here; the end-to-end
test runs the probe on a real login node)."""

from __future__ import annotations

from credsidecar.hpc.check import evaluate, probe_script

GOOD = """user=csalice
groups=csalice csgenomics
cmd=sbatch:yes
cmd=squeue:yes
cmd=scancel:yes
exists=yes
group=csgenomics
mode=2770
getfacl=yes
acl=default:user::rwx
acl=default:group::rwx
acl=default:group:csgenomics:rwx
acl=default:mask::rwx
acl=default:other::---
"""


def failures(output: str, group: str | None = "csgenomics") -> dict[str, str | None]:
    return {f.name: f.fix or f.advice for f in evaluate(output, "/work/x", group, "slurm")
            if not f.ok}  # fmt: skip


def test_a_well_set_up_directory_passes_every_check() -> None:
    findings = evaluate(GOOD, "/work/x", "csgenomics", "slurm")
    assert [f.name for f in findings] == ["group", "setgid", "default ACL", "membership",
                                          "scheduler"]  # fmt: skip
    assert all(f.ok for f in findings)


def test_each_misconfiguration_is_found_with_its_fix() -> None:
    assert failures(GOOD.replace("group=csgenomics", "group=csalice")) == {
        "group": "chgrp -R csgenomics /work/x"
    }
    assert failures(GOOD.replace("mode=2770", "mode=770"))["setgid"].startswith("chmod g+s /work/x")
    no_acl = "\n".join(line for line in GOOD.splitlines() if "acl=default:group" not in line)
    assert failures(no_acl)["default ACL"] == "setfacl -R -d -m g:csgenomics:rwx,m::rwx /work/x"
    masked = GOOD.replace("acl=default:mask::rwx", "acl=default:mask::r-x")
    assert "default ACL" in failures(masked)  # the mask takes the group's write away
    outside = GOOD.replace("groups=csalice csgenomics", "groups=csalice")
    assert failures(outside)["membership"].startswith("usermod -aG csgenomics csalice")
    no_slurm = GOOD.replace("cmd=sbatch:yes", "cmd=sbatch:no")
    assert "PATH" in (failures(no_slurm)["scheduler"] or "")


def test_getfacl_effective_notes_and_a_missing_directory() -> None:
    noted = GOOD.replace("acl=default:group:csgenomics:rwx",
                         "acl=default:group:csgenomics:rwx\t#effective:rwx")  # fmt: skip
    assert failures(noted) == {}
    missing = "user=csalice\ngroups=csalice\ncmd=sbatch:yes\ncmd=squeue:yes\ncmd=scancel:yes\n"
    assert failures(missing + "exists=no\n") == {"directory": "mkdir -p /work/x"}


def test_the_probe_quotes_the_directory_and_changes_nothing() -> None:
    script = probe_script("/work/it's; rm -rf ~", "slurm")
    assert "d='/work/it'\"'\"'s; rm -rf ~'" in script
    for verb in ("chmod", "chgrp", "setfacl ", "mkdir", "rm "):
        assert verb not in script.replace("rm -rf ~'", "")
