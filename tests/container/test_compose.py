"""deploy/compose/compose.yaml run with podman-compose: the issuer, the sandbox clouds, alice's
sidecar and a job in the sidecar's network namespace running unmodified tools (the aws CLI,
google-cloud-storage, azure-storage-blob with azure-identity), allowed and denied.

The run is slow (it builds the image, then the sandbox image from deploy/compose/Containerfile):
marked `container`, like the image tests. podman-compose comes from the `test` extra (>= 1.1).
docker compose is not installed here: the file is validated against the Compose Specification's
JSON schema instead (compose-spec.json here: schema/compose-spec.json of
github.com/compose-spec/compose-spec at 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.container.podman import REPO, podman_env
from tests.support.timing import scaled

COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
SANDBOX_TAG = "localhost/credsidecar-sandbox:test"
# What deploy/compose/job/job.py prints when alice's tools get exactly what she may do.
EXPECTED = [
    "compose-job: aws sts get-caller-identity -> ok",
    "compose-job: aws s3 ls s3://alice-data/ -> ok",
    "compose-job: aws s3 cp s3://shared-refs/refs/genome.fa - -> ok",
    "compose-job: aws s3 ls s3://bob-data/ -> AccessDenied",
    "compose-job: gcs list alice-data -> ok",
    "compose-job: gcs list bob-data -> Forbidden",
    "compose-job: blob list alice-data -> ok",
    "compose-job: blob list bob-data -> AuthorizationPermissionMismatch",
    "compose-job: ok",
]


def podman_compose() -> str:
    """podman-compose from this venv (the `test` extra), else from PATH."""
    beside = Path(sys.executable).parent / "podman-compose"
    found = str(beside) if beside.exists() else shutil.which("podman-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("podman-compose is not installed; it is in the `test` extra")
        pytest.skip("podman-compose is not installed (pip install 'podman-compose>=1.1')")
    return found


@dataclass
class Compose:
    command: list[str]
    env: dict[str, str]

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True,
            timeout=scaled(timeout), check=False,
        )  # fmt: skip


@pytest.fixture
def compose(image: str) -> Iterator[Compose]:
    """`podman-compose` for a project of its own, on the image under test; `down -v` after,
    whatever happened."""
    env = {**podman_env(), "CREDSIDECAR_IMAGE": image, "CREDSIDECAR_SANDBOX_IMAGE": SANDBOX_TAG}
    command = [podman_compose(), "--project-name", f"credsidecar-test-{uuid.uuid4().hex[:8]}",
               "--file", str(COMPOSE_FILE)]  # fmt: skip
    project = Compose(command, env)
    try:
        yield project
    finally:
        down = project.run("down", "--volumes", "--timeout", "10", timeout=300)
        assert down.returncode == 0, f"podman-compose down failed: {down.stderr[-2000:]}"


def compose_errors(document: object) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)  # the schema's own $schema
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]  # fmt: skip


def test_compose_file_follows_the_compose_specification() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert compose_errors(document) == []
    # The schema refuses what docker compose would: an unknown key, a wrong type.
    document["services"]["job"]["network-mode"] = "service:sidecar"
    document["services"]["sidecar"]["depends_on"] = "sandbox"
    assert len(compose_errors(document)) == 2


def test_compose_job_shares_the_sidecars_network_namespace() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert services["job"]["network_mode"] == "service:sidecar"
    assert services["sidecar"]["network_mode"] == "service:issuer"
    assert services["sandbox"]["network_mode"] == "service:issuer"


@pytest.mark.container
def test_compose_job_runs_real_tools_as_alice_allowed_and_denied(compose: Compose) -> None:
    started = time.monotonic()
    # --build: the sandbox image is FROM the image under test, which may have just changed.
    done = compose.run(
        "up", "--build", "--abort-on-container-exit", "--exit-code-from", "job", timeout=1800
    )
    print(f"\ncompose up (with the sandbox image build): {time.monotonic() - started:.0f} s")
    output = done.stdout + done.stderr
    job_lines = [line.split("compose-job: ", 1)[1] for line in output.splitlines()
                 if "compose-job: " in line]  # fmt: skip
    assert done.returncode == 0, f"the job failed ({done.returncode}): {output[-6000:]}"
    assert job_lines == [line.removeprefix("compose-job: ") for line in EXPECTED], output[-6000:]
