"""A classic two-container pod (classic-pod.yaml) run with `podman kube play`: the sidecar and a
job container from the same image; the pod ends when the job ends (`serve --exit-with` in the
shared PID namespace), the sidecar with exit status 0."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.podman import UID, Stack, for_container, podman
from tests.support.timing import scaled

pytestmark = pytest.mark.container

HERE = Path(__file__).parent


def container_state(pod: str, name: str) -> tuple[str, int]:
    """(status, exit code) of the pod's container `name` (podman names it POD-NAME)."""
    out = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{pod}-{name}")
    status, code = out.stdout.split()
    return status, int(code)


@pytest.fixture
def pod_yaml(image: str, stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The pod manifest for a new launch of alice (pod name, file); the pod is removed after."""
    conf = for_container(tmp_path / "conf", 0o755)
    token = conf / "launch-token"
    token.write_text(stack.issuer.mint("alice", f"pod-{os.getpid()}-{tmp_path.name}")["token"])
    os.chown(token, UID, UID)
    token.chmod(0o400)
    shutil.copyfile(HERE / "job.py", conf / "job.py")
    (conf / "job.py").chmod(0o644)
    flags = stack.sandbox.sidecar_args()
    ca = flags.index("--ca-file") + 1
    shutil.copyfile(flags[ca], conf / "ca.pem")
    (conf / "ca.pem").chmod(0o644)
    flags[ca] = "/conf/ca.pem"
    # Only the AWS flags: the others' values (--job-env CA paths) hold no shell specials, but
    # the pod needs none of them.
    aws = [
        f for i, f in enumerate(flags) if f.startswith("--aws") or flags[i - 1].startswith("--aws")
    ]
    pod = f"credsidecar-pod-{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")[:60]
    fields = {
        "POD": pod, "IMAGE": image, "CONF": str(conf),
        "JOB_ENV": str(for_container(tmp_path / "job", 0o700)),
        "SIDECAR_FLAGS": " ".join([*aws, "--ca-file", "/conf/ca.pem"]),
    }  # fmt: skip
    text = (HERE / "classic-pod.yaml").read_text()
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    assert not re.search(r"@[A-Z_]+@", text), text
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(text)
    try:
        yield pod, manifest
    finally:
        podman("kube", "down", str(manifest), check=False)
        podman("pod", "rm", "--force", pod, check=False)


def test_classic_pod_serves_the_job_and_ends_when_the_job_ends(
    pod_yaml: tuple[str, Path],
) -> None:
    pod, manifest = pod_yaml
    podman("kube", "play", str(manifest), timeout=120)
    deadline = time.monotonic() + scaled(120)
    while container_state(pod, "credsidecar")[0] != "exited":
        assert time.monotonic() < deadline, podman("pod", "logs", pod, check=False).stdout
        time.sleep(0.5)
    job_status, job_code = container_state(pod, "job")
    logs = podman("logs", f"{pod}-job", check=False)
    assert (job_status, job_code) == ("exited", 0), logs.stderr
    result = json.loads(logs.stdout.strip().splitlines()[-1])
    assert result["with_secret"] == {"status": 200, "key": "ASIA"}
    assert result["without_secret"]["status"] in (401, 403)
    # The sidecar saw its job end (--exit-with) and stopped cleanly.
    sidecar = podman("logs", f"{pod}-credsidecar", check=False)
    assert container_state(pod, "credsidecar") == ("exited", 0), sidecar.stderr[-3000:]
