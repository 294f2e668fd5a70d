"""The project's own classic Pod, deploy/kubernetes/pipeline-pod-classic.yaml, run with
`podman kube play`: the sidecar from the image under test, the job container running unmodified
cloud SDKs as alice; the pod ends when the job ends (`serve --exit-with` in the shared PID
namespace), both containers with exit status 0.

The manifest is played as shipped except for what `played_manifest` below changes, each for a
reason a test has: the images (the ones built here), the host's network (the issuer and the
sandbox clouds listen on the host's 127.0.0.1), alice's launch token in place of the Secret
(podman 4.3 cannot mount one), the sandbox's `serve` flags and CA, and the job's command
(tests/container/job.py, with the Azure account URL it needs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.container.podman import REPO, UID, Stack, for_container, podman, podman_env
from tests.support.timing import scaled

pytestmark = pytest.mark.container

MANIFEST = REPO / "deploy" / "kubernetes" / "pipeline-pod-classic.yaml"
JOB = Path(__file__).with_name("job.py")
# The sandbox image of deploy/compose (the image under test plus the `[sandbox]` extra: boto3,
# google-cloud-storage, azure-identity, azure-storage-blob), as tests/container/test_compose.py
# builds it.
SANDBOX_CONTEXT = REPO / "deploy" / "compose"
SANDBOX_TAG = "localhost/credsidecar-sandbox:test"
# The job command the manifest ships with, and what the test runs instead.
SHIPPED_JOB_COMMAND = "exec aws s3 ls s3://alice-data/"
TEST_JOB_COMMAND = "exec python3 /job/job.py"
# What job.py prints when alice's SDKs get exactly what she may do.
EXPECTED = [
    "s3 list alice-data -> ok",
    "gcs list alice-data -> ok",
    "blob list alice-data -> ok",
    "s3 list bob-data -> AccessDenied",
    "gcs list bob-data -> Forbidden",
    "blob list bob-data -> AuthorizationPermissionMismatch",
    "ok",
]


@pytest.fixture(scope="module")
def sandbox_image(image: str) -> str:
    """deploy/compose/Containerfile on the image under test (rebuilt: the image may be new)."""
    ca = os.environ.get("PIP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    done = subprocess.run(
        ["podman", "build", "--file", str(SANDBOX_CONTEXT / "Containerfile"),
         "--build-arg", f"IMAGE={image}",
         "--build-arg", f"PIP_INDEX_URL={os.environ.get('PIP_INDEX_URL', 'https://pypi.org/simple')}",
         "--secret", f"id=pip-ca,src={ca}", "--tag", SANDBOX_TAG, str(SANDBOX_CONTEXT)],
        env=podman_env(), capture_output=True, text=True, timeout=scaled(1800), check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"the sandbox image build failed: {done.stderr[-4000:]}"
    return SANDBOX_TAG


def readable_copy(source: Path, target: Path) -> Path:
    """`source`'s files in a directory the pod's uid may read (the sandbox's is 0700)."""
    for_container(target, 0o755)
    for path in source.iterdir():
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            (target / path.name).chmod(0o644)
    return target


def played_manifest(
    *, pod: str, image: str, sandbox_image: str, stack: Stack, token: str, files: Path
) -> dict[str, Any]:
    """The shipped classic Pod with the test's substitutions."""
    doc = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    spec = doc["spec"]
    sidecar, job = spec["containers"]
    assert (sidecar["name"], job["name"]) == ("credsidecar", "job")
    doc["metadata"]["name"] = pod  # podman names the containers POD-credsidecar and POD-job
    spec["hostNetwork"] = True  # the issuer and the sandbox listen on the host's 127.0.0.1
    sidecar["image"] = image
    job["image"] = sandbox_image  # unmodified boto3, google-cloud-storage, azure-identity
    # The sandbox's `serve` flags; its CA files (the sidecar's and the job's HTTPS trust) are
    # mounted on /sandbox-ca in both containers.
    ca_dir = Path(stack.sandbox.info["azure"]["ca_file"]).parent
    flags = [f.replace(str(ca_dir), "/sandbox-ca") for f in stack.sandbox.sidecar_args()]
    sidecar["args"][0] = f"{sidecar['args'][0].rstrip()} \\\n  {shlex.join(flags)}\n"
    # The job: tests/container/job.py instead of the shipped `aws s3 ls`.
    script = job["args"][0].rstrip()
    assert script.endswith(SHIPPED_JOB_COMMAND), script
    job["args"][0] = script.removesuffix(SHIPPED_JOB_COMMAND) + TEST_JOB_COMMAND + "\n"
    blob_url = stack.sandbox.info["azure"]["blob_url"]
    job["env"].append({"name": "SANDBOX_BLOB_URL", "value": blob_url})  # job.py's one input
    readable_copy(ca_dir, files / "sandbox-ca")
    for_container(files / "job", 0o755)
    shutil.copyfile(JOB, files / "job" / "job.py")
    spec["volumes"] += [
        {"name": "sandbox-ca", "hostPath": {"path": str(files / "sandbox-ca"),
                                            "type": "Directory"}},
        {"name": "job-py", "hostPath": {"path": str(files / "job"), "type": "Directory"}},
    ]  # fmt: skip
    ca_mount = {"name": "sandbox-ca", "mountPath": "/sandbox-ca", "readOnly": True}
    sidecar["volumeMounts"].append(ca_mount)
    job["volumeMounts"] += [ca_mount, {"name": "job-py", "mountPath": "/job", "readOnly": True}]
    # alice's launch token where the manifest mounts its Secret. podman 4.3's `kube play`
    # crashes on a secret volume (a nil secrets manager, fixed in 4.4), so the Secret's one key
    # is a file in a hostPath directory here, owned by the pod's uid.
    (volume,) = [v for v in spec["volumes"] if v["name"] == "launch-token"]
    key = for_container(files / "launch-token", 0o700) / "launch-token"
    key.write_text(token, encoding="utf-8")
    os.chown(key, UID, UID)
    key.chmod(0o400)
    del volume["secret"]
    volume["hostPath"] = {"path": str(key.parent), "type": "Directory"}
    return doc


def inspect(pod: str, name: str) -> dict[str, Any]:
    """`podman inspect` of the pod's container `name` (podman names it POD-NAME)."""
    return dict(json.loads(podman("container", "inspect", f"{pod}-{name}").stdout)[0])


def wait_for_exit(pod: str, name: str) -> int:
    """Blocks until the pod's container `name` has exited (`podman wait`); its exit status."""
    done = podman("wait", "--condition", "exited", f"{pod}-{name}", timeout=300)
    return int(done.stdout.strip())


@pytest.fixture
def played(image: str, sandbox_image: str, stack: Stack, tmp_path: Path) -> Iterator[str]:
    """The classic Pod for a new launch of alice, played; its name. Taken down after."""
    pod = f"credsidecar-pod-{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")[:60]
    token = stack.issuer.mint("alice", pod)["token"]
    doc = played_manifest(pod=pod, image=image, sandbox_image=sandbox_image, stack=stack,
                           token=token, files=tmp_path)  # fmt: skip
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    try:
        podman("kube", "play", str(manifest), timeout=300)
        yield pod
    finally:
        podman("kube", "down", str(manifest), check=False)
        podman("pod", "rm", "--force", pod, check=False)


def test_classic_pod_manifest_serves_real_sdks_and_ends_when_the_job_ends(played: str) -> None:
    pod = played
    job_status = wait_for_exit(pod, "job")
    job = podman("logs", f"{pod}-job", check=False)
    sidecar = podman("logs", f"{pod}-credsidecar", check=False)
    output = f"job: {job.stdout}{job.stderr}\nsidecar: {sidecar.stderr[-3000:]}"
    lines = [line.split("pod-job: ", 1)[1] for line in job.stdout.splitlines()
             if "pod-job: " in line]  # fmt: skip
    assert lines == EXPECTED, output
    assert job_status == 0, output
    # Nothing stops the sidecar but its job's end (--exit-with): it stops by itself, cleanly,
    # and then the pod holds no running container.
    assert wait_for_exit(pod, "credsidecar") == 0, output
    sidecar = podman("logs", f"{pod}-credsidecar", check=False)
    assert "sidecar stopping" in sidecar.stderr, sidecar.stderr[-3000:]
    running = podman("ps", "--filter", f"pod={pod}", "--format", "{{.Names}}").stdout.split()
    assert [name for name in running if not name.endswith("-infra")] == []
    # ... confined as the manifest asks: uid 65532, a read-only root filesystem.
    state = inspect(pod, "credsidecar")
    assert state["Config"]["User"].split(":")[0] == str(UID)
    assert state["HostConfig"]["ReadonlyRootfs"] is True
