"""The container image (container/Containerfile, built by `container/build --local-base`) run
with podman: its user and confinement, and `serve` against the sandbox on this host.

Slow (the first build makes a Debian root filesystem): marked `container`, which CI runs
(scripts/test installs podman and points CONTAINERS_CONF at container/test-containers.conf).
Without podman the module is skipped here, but fails in CI.

The sidecar container shares the host's network (`--network host`), as a pod's containers share
one: it reaches the issuer and sandbox on 127.0.0.1, and boto3 on the host reaches it. boto3
runs as root and the sidecar as 65532; the sidecar admits root peers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.container.podman import CONFINED, NO_HEALTHCHECK, REPO, UID, Stack, for_container, podman
from tests.support.jobenv import apply_shell_env
from tests.support.stack import run_client
from tests.support.timing import scaled

pytestmark = pytest.mark.container

BOTO3_CLIENT = [sys.executable, str(REPO / "tests" / "e2e" / "clients" / "boto3_s3.py")]
# The image's run directory, which `serve` makes in the tmpfs on /tmp.
RUN_DIR = "/tmp/credsidecar"


def run_python(image: str, code: str) -> subprocess.CompletedProcess[str]:
    """python3 inside a confined container of `image` (the image's user and env)."""
    return podman("run", "--rm", *CONFINED, *NO_HEALTHCHECK, "--entrypoint", "python3", image,
                  "-c", code)  # fmt: skip


def test_image_runs_credsidecar_as_its_entrypoint_confined(image: str) -> None:
    done = podman("run", "--rm", *CONFINED, *NO_HEALTHCHECK, image, "--version")
    assert done.stdout.startswith("credsidecar ")
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspected["Config"]["User"] == f"{UID}:{UID}"
    assert inspected["Config"]["Entrypoint"] == ["credsidecar"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "credsidecar", "healthcheck"]


def test_container_user_is_65532_with_no_capabilities(image: str) -> None:
    code = (
        "import os\n"
        "caps = dict(line.split(':\\t') for line in open('/proc/self/status') if 'Cap' in line)\n"
        "print(os.getuid(), os.getgid(), int(caps['CapEff'], 16), int(caps['CapBnd'], 16))\n"
    )
    assert run_python(image, code).stdout.split() == [str(UID), str(UID), "0", "0"]


def test_root_filesystem_is_read_only_and_the_run_dir_private_and_writable(image: str) -> None:
    code = (
        "import errno, os\n"
        "try:\n"
        "    open('/opt/credsidecar/planted', 'w')\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
        "run_dir = os.environ['CREDSIDECAR_RUN_DIR']\n"
        "os.mkdir(run_dir, 0o700)\n"
        "open(os.path.join(run_dir, 'probe'), 'w').write('x')\n"
        "print(run_dir)\n"
    )
    lines = run_python(image, code).stdout.split("\n")
    assert lines[0] == errno.errorcode[errno.EROFS]
    # `serve` creates its run directory (0700, its own) on the tmpfs, as this did.
    assert lines[1] == RUN_DIR


@dataclass
class Sidecar:
    name: str
    job_dir: Path  # --env-file and --run-dir are here, the same path on both sides
    ready_seconds: float


_names = iter(range(1_000_000))


@pytest.fixture
def sidecar(image: str, stack: Stack, tmp_path: Path) -> Iterator[Sidecar]:
    """`IMAGE serve` for a new launch of alice, confined, ready (its healthcheck passes).

    The job's env file names files in the run directory (the AWS container token file), so
    like a pod's shared volume the directory holding both is mounted at the same path on both
    sides."""
    conf = for_container(tmp_path / "conf", 0o755)
    token = conf / "launch-token"
    token.write_text(stack.issuer.mint("alice", f"container-{os.getpid()}-{next(_names)}")["token"])
    os.chown(token, UID, UID)
    token.chmod(0o400)
    # The sandbox's flags name its CA file on the host: the container reads a copy in conf/.
    flags = stack.sandbox.sidecar_args()
    ca = flags.index("--ca-file") + 1
    shutil.copyfile(flags[ca], conf / "ca.pem")
    (conf / "ca.pem").chmod(0o644)
    flags[ca] = "/etc/credsidecar/ca.pem"
    job_dir = for_container(tmp_path / "job", 0o700)
    name = f"credsidecar-test-{os.getpid()}-{next(_names)}"
    started = time.monotonic()
    podman(
        "run", "--detach", "--name", name, "--network", "host", *CONFINED,
        "-v", f"{conf}:/etc/credsidecar:ro", "-v", f"{job_dir}:{job_dir}",
        # The variable, not --run-dir: the image's HEALTHCHECK reads the same variable.
        "--env", f"CREDSIDECAR_RUN_DIR={job_dir}/run", image,
        "serve", "--token-file", "/etc/credsidecar/launch-token",
        "--env-file", f"{job_dir}/job.env", "--clouds", "aws", *flags,
    )  # fmt: skip
    try:
        deadline = started + scaled(60)
        while podman("healthcheck", "run", name, check=False).returncode != 0:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = podman("logs", name, check=False)
                raise AssertionError(f"sidecar container {state}, not ready: {logs.stderr[-3000:]}")
            time.sleep(0.2)
        yield Sidecar(name, job_dir, time.monotonic() - started)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_serve_in_the_container_gives_boto3_on_the_host_alices_role(sidecar: Sidecar) -> None:
    env = apply_shell_env((sidecar.job_dir / "job.env").read_text())
    done = run_client([*BOTO3_CLIENT, "alice"], env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["caller"].startswith("arn:aws:sts::123456789012:assumed-role/alice-data/alice@")
    assert result["write_own"] == "ok"
    assert result["list_other"] == "AccessDenied"
    pid = podman("inspect", "--format", "{{.State.Pid}}", sidecar.name).stdout.strip()
    rss = next(
        int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )  # fmt: skip
    stats = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", sidecar.name, check=False)
    print(f"\nsidecar container: ready {sidecar.ready_seconds:.2f} s after `podman run`; "
          f"PID 1 RSS {rss / 1024:.1f} MiB; podman stats {stats.stdout.strip()}")  # fmt: skip


def test_sigterm_stops_the_sidecar_as_pid_1_cleanly(sidecar: Sidecar) -> None:
    """`podman stop` sends SIGTERM to PID 1 (credsidecar, no shell): it exits 0 and removes the
    env file it wrote. A PID 1 that ignored SIGTERM would be killed (137) after the timeout."""
    assert (sidecar.job_dir / "job.env").exists()
    podman("stop", "--time", "30", sidecar.name, timeout=60)
    state = podman("inspect", "--format", "{{.State.ExitCode}}", sidecar.name).stdout.strip()
    assert state == "0", podman("logs", sidecar.name, check=False).stderr[-3000:]
    assert not (sidecar.job_dir / "job.env").exists()


def test_sigterm_stops_the_sidecar_as_pid_1_while_it_waits_for_credentials(
    image: str, tmp_path: Path
) -> None:
    conf = for_container(tmp_path / "conf", 0o755)
    (conf / "token").write_text("a.b.c")
    (conf / "token").chmod(0o644)
    name = f"credsidecar-test-{os.getpid()}-{next(_names)}"
    podman(
        "run", "--detach", "--name", name, "--network", "host", *CONFINED, *NO_HEALTHCHECK,
        "-v", f"{conf}:/etc/credsidecar:ro", image,
        "serve", "--direct-token-file", "/etc/credsidecar/token",
        "--aws-role-arn", "arn:aws:iam::123456789012:role/unreachable",
        # Nothing listens on port 1: STS stays unreachable, so the sidecar keeps retrying.
        "--aws-sts-endpoint", "http://127.0.0.1:1", "--ready-timeout", "600",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(30)
        while "unreachable" not in podman("logs", name, check=False).stderr:
            assert time.monotonic() < deadline, "the sidecar never tried STS"
            time.sleep(0.2)
        podman("stop", "--time", "5", name, timeout=60)
        state = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert state != "137", "SIGTERM was ignored: podman killed PID 1 after its timeout"
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_credsidecar_starts_with_a_run_dir_volume_and_no_writable_tmp(image: str) -> None:
    """A read-only root with a volume only for the run directory (a Kubernetes emptyDir on it,
    no /tmp volume): the commands work, or at least say what is missing without a traceback."""
    done = podman(
        "run", "--rm", *NO_HEALTHCHECK, "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", "/srv/run", "--env", "CREDSIDECAR_RUN_DIR=/srv/run/credsidecar",
        image, "--version", check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr
