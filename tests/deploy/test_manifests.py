"""Every file in deploy/ checked against the real schema of its platform, offline.

- Kubernetes manifests: the strict (no unknown fields) JSON schemas of the newest Kubernetes
  version that kubernetes-validate ships, plus the properties credsidecar relies on (native
  sidecar, startup probe, non-root 65532, read-only root, no secret values in the files).
- AWS Batch: botocore's own parameter validation of RegisterJobDefinition (no network call).
- Google Batch: `google.cloud.batch_v1.Job` from JSON, unknown fields refused.
- Azure Batch: the `azure-batch` models, walked strictly (unknown keys, missing required keys,
  enum values and types refused: the models themselves accept anything).
- Nextflow: nextflow is not installable here (a JVM and a download at first run), so the config's
  structure is checked and each profile's beforeScript is parsed by `bash -n`.
- The issuer's ConfigMap: issuer.toml and policy.toml load with credsidecar's own parsers.
"""

from __future__ import annotations

import datetime
import enum
import json
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SIDECAR_UID = 65532
# Run for real (as root) by tests/e2e/test_well_known.py; its syntax is checked here.
NETNS_SCRIPT = DEPLOY / "netns" / "well-known-netns.sh"
# Secret values never belong in a committed manifest: the names of variables that would carry one.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|KEK|SAS", re.IGNORECASE)
# Prefixes of the variables the sidecar's job environment sets or unsets: a value set by the
# platform would override (or undo) what the sidecar exports.
SIDECAR_VARIABLE_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "AZURE_", "IDENTITY_", "MSI_")


def deploy_files(suffix: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob(f"*{suffix}") if p.is_file())


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc["kind"]
    if kind == "Pod":
        return typing.cast(dict[str, Any], doc["spec"])
    if kind in ("Job", "Deployment"):
        return typing.cast(dict[str, Any], doc["spec"]["template"]["spec"])
    return None


def credsidecar_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        if container["image"].startswith("credsidecar:"):
            yield container


def sidecar_args(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


K8S_DOCS = k8s_documents()
PIPELINE_DOCS = [(n, d) for n, d in K8S_DOCS if n.startswith("pipeline-")]


def test_every_deploy_file_is_covered_here() -> None:
    """A new file in deploy/ must be added to a check below (or be a README)."""
    checked = {
        *KUBERNETES.glob("*.yaml"),
        DEPLOY / "aws-batch" / "job-definition.json",
        DEPLOY / "google-batch" / "job.json",
        DEPLOY / "azure-batch" / "job.json",
        DEPLOY / "azure-batch" / "task.json",
        DEPLOY / "nextflow" / "nextflow.config",
        NETNS_SCRIPT,
    }
    # deploy/compose/ is run for real by the container tests (tests/container/).
    folders = ("kubernetes", "aws-batch", "google-batch", "azure-batch", "nextflow", "netns")
    present = {
        p for folder in folders for p in (DEPLOY / folder).rglob("*")
        if p.is_file() and p.name != "README.md"
    }  # fmt: skip
    assert present - checked == set(), "deploy files no test validates"
    assert all(p.exists() for p in checked)
    for folder in folders:
        assert (DEPLOY / folder / "README.md").is_file()


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), K8S_DOCS, ids=[n for n, _ in K8S_DOCS])
def test_kubernetes_manifest_matches_the_strict_schema_of_a_current_release(
    name: str, doc: dict[str, Any]
) -> None:
    from kubernetes_validate import utils

    version = utils.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33)
    # Raises on an unknown field, a wrong type or a kind it has no schema for.
    utils.validate(doc, version, strict=True)


def test_kubernetes_schema_check_refuses_an_unknown_field() -> None:
    """The validator is strict: a misspelt restartPolicy would otherwise pass unnoticed."""
    import jsonschema
    from kubernetes_validate import utils

    doc = dict(K8S_DOCS)["pipeline-job.yaml:Job/pipeline-run-r1"]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        utils.validate(bad, utils.latest_version(), strict=True)


@pytest.mark.parametrize(
    "name",
    [
        "pipeline-job.yaml:Job/pipeline-run-r1",
        "pipeline-job-direct.yaml:Job/pipeline-run-r1-direct",
    ],
)
def test_native_sidecar_starts_first_and_gates_the_job_on_readiness(name: str) -> None:
    doc = dict(K8S_DOCS)[name]
    spec = pod_spec(doc)
    assert spec is not None
    assert spec["restartPolicy"] == "Never"
    # A sidecar that never gets ready is restarted by the kubelet forever: the deadline ends it.
    assert doc["spec"]["backoffLimit"] == 0 and doc["spec"]["activeDeadlineSeconds"] > 0
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: stopped after the job ends
    # A restart would bring a new port and new secrets the job has already read.
    assert "livenessProbe" not in sidecar
    probe = sidecar["startupProbe"]["exec"]["command"]
    assert probe[:2] == ["credsidecar", "healthcheck"]
    run_dir = probe[probe.index("--run-dir") + 1]
    assert f"--run-dir={run_dir}" in sidecar["args"]
    assert "--env-file=/job-env/env" in sidecar["args"]
    (job,) = spec["containers"]
    script = " ".join(job["args"])
    assert "set -a; . /job-env/env; set +a; exec " in script
    # The job sees the run directory at the same path: the env file names files in it.
    mounts = {m["name"]: m["mountPath"] for m in job["volumeMounts"]}
    sidecar_mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["run"] == sidecar_mounts["run"] and run_dir.startswith(mounts["run"] + "/")
    assert mounts["job-env"] == sidecar_mounts["job-env"] == "/job-env"


def test_native_sidecar_job_takes_the_launch_token_from_a_secret() -> None:
    spec = pod_spec(dict(K8S_DOCS)["pipeline-job.yaml:Job/pipeline-run-r1"])
    assert spec is not None
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "secretName" in volumes["launch-token"]["secret"]
    assert any(a.startswith("--token-file=") for a in spec["initContainers"][0]["args"])


def test_direct_job_presents_a_projected_service_account_token() -> None:
    spec = pod_spec(dict(K8S_DOCS)["pipeline-job-direct.yaml:Job/pipeline-run-r1-direct"])
    assert spec is not None
    (source,) = {v["name"]: v for v in spec["volumes"]}["launch-token"]["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "sts.amazonaws.com"
    args = spec["initContainers"][0]["args"]
    assert f"--direct-token-file=/var/run/credsidecar/launch/{token['path']}" in args
    assert any(a.startswith("--aws-role-arn=arn:aws:iam::") for a in args)


def test_classic_pod_stops_the_sidecar_with_the_job_through_a_pid_file() -> None:
    spec = pod_spec(dict(K8S_DOCS)["pipeline-pod-classic.yaml:Pod/pipeline-run-r1"])
    assert spec is not None
    assert spec["shareProcessNamespace"] is True
    assert spec["restartPolicy"] == "Never"
    assert "initContainers" not in spec
    sidecar, job = spec["containers"]
    sidecar_script, job_script = sidecar["args"][0], job["args"][0]
    # The job publishes its shell's PID atomically, then execs (same PID) once the env is there.
    publish = "echo $$ > /job-env/job.pid.tmp && mv /job-env/job.pid.tmp /job-env/job.pid"
    assert publish in job_script
    assert job_script.rstrip().splitlines()[-1].startswith("exec ")
    assert 'exec credsidecar serve --exit-with "$pid"' in sidecar_script
    assert "--env-file /job-env/env" in sidecar_script


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("container", ["credsidecar", "job"])
def test_classic_pod_scripts_are_valid_shell(container: str) -> None:
    spec = pod_spec(dict(K8S_DOCS)["pipeline-pod-classic.yaml:Pod/pipeline-run-r1"])
    assert spec is not None
    (script,) = {c["name"]: c for c in spec["containers"]}[container]["args"]
    subprocess.run(["sh", "-n", "-c", script], check=True)


WORKLOAD_DOCS = PIPELINE_DOCS + [(n, d) for n, d in K8S_DOCS if d["kind"] == "Deployment"]


@pytest.mark.parametrize(("name", "doc"), WORKLOAD_DOCS, ids=[n for n, _ in WORKLOAD_DOCS])
def test_every_container_runs_as_65532_with_a_read_only_root_and_no_capabilities(
    name: str, doc: dict[str, Any]
) -> None:
    spec = pod_spec(doc)
    assert spec is not None
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == SIDECAR_UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == SIDECAR_UID, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert "limits" in container["resources"] and "requests" in container["resources"]


def test_sidecars_keep_the_default_peer_check_where_job_and_sidecar_share_a_uid() -> None:
    """--any-local-peer is not needed (and not used) when the job runs as the sidecar's uid."""
    for name, doc in PIPELINE_DOCS:
        spec = pod_spec(doc)
        assert spec is not None
        for container in credsidecar_containers(spec):
            assert "--any-local-peer" not in sidecar_args(container), name
            assert "--run-dir" in sidecar_args(container), name


def test_issuer_deployment_has_probes_state_and_one_replica() -> None:
    docs = dict(K8S_DOCS)
    deployment = docs["issuer.yaml:Deployment/credsidecar-issuer"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one SQLite writer
    spec = pod_spec(deployment)
    assert spec is not None
    (issuer,) = spec["containers"]
    assert issuer["args"][:2] == ["issuer", "serve"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert issuer[probe]["httpGet"]["path"] == "/healthz"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"credsidecar-issuer-state"}
    assert "issuer.yaml:PersistentVolumeClaim/credsidecar-issuer-state" in docs
    assert "issuer.yaml:Service/credsidecar-issuer" in docs


def test_issuer_configmap_loads_with_credsidecars_own_parsers(tmp_path: Path) -> None:
    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.policy import load_policy

    data = dict(K8S_DOCS)["issuer.yaml:ConfigMap/credsidecar-issuer"]["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "issuer.toml")
    assert config.issuer_url.startswith("https://")
    assert config.port == 8400
    assert str(config.state_dir).startswith("/var/lib/credsidecar/")
    assert config.kek_env == "CREDSIDECAR_HPC_KEK"
    policy = load_policy(config.policy_path)
    assert policy is not None


def test_ingress_publishes_only_discovery_and_the_token_exchange() -> None:
    ingress = dict(K8S_DOCS)["issuer-ingress.yaml:Ingress/credsidecar-issuer"]
    assert ingress["spec"]["tls"]
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/.well-known/openid-configuration", "/.well-known/jwks.json", "/v1/token"}


@pytest.mark.parametrize(("name", "doc"), K8S_DOCS, ids=[n for n, _ in K8S_DOCS])
def test_kubernetes_manifests_carry_no_secret_values(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] == "Secret":
        assert not doc.get("data") and not doc.get("stringData")
    spec = pod_spec(doc)
    if spec is None:
        return
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for var in container.get("env", []):
            if SECRET_NAME.search(var["name"]):
                assert "value" not in var, f"{name}: {var['name']} has a literal value"
            assert not var["name"].startswith(SIDECAR_VARIABLE_PREFIXES), var["name"]


# --- AWS Batch -----------------------------------------------------------------------------


def aws_job_definition() -> dict[str, Any]:
    return typing.cast(
        dict[str, Any],
        json.loads((DEPLOY / "aws-batch" / "job-definition.json").read_text(encoding="utf-8")),
    )


def test_aws_batch_job_definition_passes_botocores_register_job_definition_validation() -> None:
    import botocore.session
    from botocore.validate import validate_parameters

    client = botocore.session.get_session().create_client(
        "batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    shape = client.meta.service_model.operation_model("RegisterJobDefinition").input_shape
    validate_parameters(aws_job_definition(), shape)  # raises ParamValidationError


def test_aws_batch_validation_refuses_an_unknown_field() -> None:
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    client = botocore.session.get_session().create_client(
        "batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    shape = client.meta.service_model.operation_model("RegisterJobDefinition").input_shape
    bad = aws_job_definition()
    bad["ecsProperties"]["taskProperties"][0]["containers"][0]["entrypoint"] = ["sh"]
    with pytest.raises(ParamValidationError):
        validate_parameters(bad, shape)


def test_aws_batch_sidecar_is_non_essential_secret_only_and_the_job_waits_for_it() -> None:
    (task,) = aws_job_definition()["ecsProperties"]["taskProperties"]
    containers = {c["name"]: c for c in task["containers"]}
    sidecar, job = containers["sidecar"], containers["job"]
    assert sidecar["essential"] is False and job["essential"] is True
    assert job["dependsOn"] == [{"containerName": "sidecar", "condition": "START"}]
    assert "--secret-only" in sidecar["command"]  # EC2: host networking shares loopback
    assert sidecar["user"] == f"{SIDECAR_UID}:{SIDECAR_UID}" and sidecar["readonlyRootFilesystem"]
    (secret,) = sidecar["secrets"]
    token_env = sidecar["command"][sidecar["command"].index("--token-env") + 1]
    assert secret["name"] == token_env
    assert secret["valueFrom"].startswith("arn:aws:secretsmanager:")
    run_dir = sidecar["command"][sidecar["command"].index("--run-dir") + 1]
    assert f"credsidecar env --run-dir {run_dir} --wait 60" in job["command"][-1]
    assert "|| exit 1" in job["command"][-1]
    # The run directory's volume is made the sidecar's before it starts.
    assert sidecar["dependsOn"] == [{"containerName": "prepare", "condition": "SUCCESS"}]
    assert containers["prepare"]["essential"] is False
    for container in task["containers"]:
        for var in container.get("environment", []):
            assert not SECRET_NAME.search(var["name"]), var["name"]


# --- Google Batch --------------------------------------------------------------------------


def google_job_text() -> str:
    return (DEPLOY / "google-batch" / "job.json").read_text(encoding="utf-8")


def test_google_batch_job_parses_as_batch_v1_job_with_unknown_fields_refused() -> None:
    from google.cloud import batch_v1

    job = batch_v1.Job.from_json(google_job_text(), ignore_unknown_fields=False)
    runnables = job.task_groups[0].task_spec.runnables
    sidecar = next(r for r in runnables if r.display_name == "credsidecar")
    assert sidecar.background is True
    commands = list(sidecar.container.commands)
    assert "--secret-only" in commands
    token_env = commands[commands.index("--token-env") + 1]
    secret = sidecar.environment.secret_variables[token_env]
    assert re.fullmatch(r"projects/[^/]+/secrets/[^/]+/versions/\w+", secret)
    assert not sidecar.environment.variables
    job_runnable = runnables[-1]
    assert not job_runnable.background
    env_file = commands[commands.index("--env-file") + 1]
    assert f"set -a; . {env_file}; set +a;" in job_runnable.container.commands[-1]
    assert list(job_runnable.container.volumes) == list(sidecar.container.volumes)


def test_google_batch_parse_refuses_an_unknown_field() -> None:
    from google.cloud import batch_v1
    from google.protobuf.json_format import ParseError

    bad = json.loads(google_job_text())
    bad["taskGroups"][0]["taskSpec"]["runnables"][1]["backgrund"] = True
    with pytest.raises(ParseError):
        batch_v1.Job.from_json(json.dumps(bad), ignore_unknown_fields=False)


# --- Azure Batch ---------------------------------------------------------------------------

_ISO_DURATION = re.compile(r"P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")


def _azure_namespace() -> dict[str, Any]:
    import azure.batch.models as models
    import azure.batch.models._models as impl

    return {**vars(impl), "_models": models}


def _check_azure(value: Any, annotation: Any, where: str) -> None:
    """Walks JSON against an azure-batch model annotation, refusing what the service would."""
    from azure.batch._utils.model_base import Model

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        enums = [a for a in options if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            allowed = {str(m.value).lower() for e in enums for m in e}
            assert isinstance(value, str) and value.lower() in allowed, f"{where}: {value!r}"
            return
        assert len(options) == 1, f"{where}: no rule for {annotation}"
        _check_azure(value, options[0], where)
        return
    if origin is list:
        assert isinstance(value, list), f"{where}: not a list"
        for i, item in enumerate(value):
            _check_azure(item, typing.get_args(annotation)[0], f"{where}[{i}]")
        return
    if origin is dict:
        assert isinstance(value, dict), f"{where}: not an object"
        return
    if isinstance(annotation, type) and issubclass(annotation, Model):
        assert isinstance(value, dict), f"{where}: not an object"
        hints = typing.get_type_hints(annotation, globalns=_azure_namespace())
        fields = type(annotation({}))._attr_to_rest_field  # computed on first instance
        by_rest = {f._rest_name: (attr, hints[attr]) for attr, f in fields.items()}
        unknown = set(value) - set(by_rest)
        assert not unknown, f"{where}: unknown {sorted(unknown)} for {annotation.__name__}"
        for rest, (_attr, hint) in by_rest.items():
            optional = type(None) in typing.get_args(hint)
            assert optional or rest in value, f"{where}: {annotation.__name__} needs {rest!r}"
            if rest in value:
                _check_azure(value[rest], hint, f"{where}.{rest}")
        return
    if annotation is datetime.timedelta:
        assert isinstance(value, str) and _ISO_DURATION.fullmatch(value), f"{where}: {value!r}"
        return
    if annotation is bool:
        assert isinstance(value, bool), f"{where}: not a boolean"
        return
    if annotation is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: not an integer"
        return
    if annotation is str:
        assert isinstance(value, str), f"{where}: not a string"
        return
    raise AssertionError(f"{where}: no rule for {annotation}")


def azure_json(name: str) -> dict[str, Any]:
    path = DEPLOY / "azure-batch" / name
    return typing.cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("name", "model"),
    [("job.json", "BatchJobCreateOptions"), ("task.json", "BatchTaskCreateOptions")],
)
def test_azure_batch_json_matches_the_azure_batch_models(name: str, model: str) -> None:
    import azure.batch.models as models

    cls = getattr(models, model)
    data = azure_json(name)
    _check_azure(data, cls, name)
    # And the SDK itself builds the request body from it unchanged.
    assert cls(data).as_dict() == data


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(commandline="x"),  # misspelt key
        lambda d: d.pop("commandLine"),  # required key missing
        lambda d: d["userIdentity"]["autoUser"].update(scope="tsk"),  # not an enum value
        lambda d: d["constraints"].update(maxWallClockTime="12h"),  # not an ISO 8601 duration
    ],
    ids=["unknown-key", "missing-required", "bad-enum", "bad-duration"],
)
def test_azure_batch_check_refuses_what_the_service_would(change: Any) -> None:
    import azure.batch.models as models

    data = azure_json("task.json")
    change(data)
    with pytest.raises(AssertionError):
        _check_azure(data, models.BatchTaskCreateOptions, "task.json")


def test_azure_batch_task_uses_the_wrapper_secret_only_and_a_per_task_run_dir() -> None:
    task, job = azure_json("task.json"), azure_json("job.json")
    command = task["commandLine"]
    start = "env_text=$(credsidecar start --exit-with $$ --token-env CREDSIDECAR_LAUNCH_TOKEN"
    assert start in command
    assert ') || exit 1; unset CREDSIDECAR_LAUNCH_TOKEN; eval "$env_text";' in command
    assert '--run-dir "$AZ_BATCH_TASK_WORKING_DIR/credsidecar"' in command
    assert {"name": "CREDSIDECAR_SECRET_ONLY", "value": "true"} in job["commonEnvironmentSettings"]
    assert task["userIdentity"]["autoUser"]["scope"] == "task"  # a uid per task
    (token,) = task["environmentSettings"]
    assert token["value"].startswith("<")  # a placeholder, filled in at submission


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_azure_batch_command_lines_are_valid_shell() -> None:
    command_lines = (
        ("task.json", ("commandLine",)),
        ("job.json", ("jobPreparationTask", "commandLine")),
    )
    for name, path in command_lines:
        value: Any = azure_json(name)
        for key in path:
            value = value[key]
        assert value.startswith(("/bin/bash -c '", "/bin/sh -c '"))
        inner = value.split(" -c ", 1)[1]
        # The command line as Batch's shell-less launcher passes it: one quoted argument.
        script = subprocess.run(
            ["bash", "-c", f"printf %s {inner}"], check=True, capture_output=True, text=True
        ).stdout
        subprocess.run(["bash", "-n", "-c", script], check=True)


# --- Nextflow ------------------------------------------------------------------------------

NEXTFLOW_EXECUTORS = {"k8s", "awsbatch", "google-batch", "azurebatch"}


def nextflow_config() -> str:
    return (DEPLOY / "nextflow" / "nextflow.config").read_text(encoding="utf-8")


def _strip_comments_and_strings(text: str) -> str:
    text = re.sub(r"'''.*?'''", "''", text, flags=re.DOTALL)
    text = re.sub(r"'(?:[^'\\\n]|\\.)*'", "''", text)
    return re.sub(r"//[^\n]*", "", text)


def nextflow_profiles() -> dict[str, str]:
    """Profile name -> body, for the top-level `profiles { name { ... } }` block."""
    code = nextflow_config()
    start = code.index("profiles {") + len("profiles {")
    profiles: dict[str, str] = {}
    depth, name_start, body_start = 0, start, 0
    name = ""
    i = start
    while i < len(code):
        if code.startswith("'''", i):
            i = code.index("'''", i + 3) + 3
            continue
        if code.startswith("//", i):
            i = code.index("\n", i)
            continue
        ch = code[i]
        if ch == "{":
            if depth == 0:
                name = code[name_start:i].strip().split()[-1]
                body_start = i + 1
            depth += 1
        elif ch == "}":
            if depth == 0:
                break
            depth -= 1
            if depth == 0:
                profiles[name] = code[body_start:i]
                name_start = i + 1
        i += 1
    skeleton = _strip_comments_and_strings(code)
    assert skeleton.count("{") == skeleton.count("}"), "unbalanced braces"
    return profiles


def test_nextflow_config_has_a_profile_per_executor_and_the_head_job() -> None:
    profiles = nextflow_profiles()
    executors = {
        m.group(1)
        for body in profiles.values()
        for m in re.finditer(r"process\.executor = '([^']+)'", body)
    }
    assert executors == NEXTFLOW_EXECUTORS
    assert set(profiles) == {"k8s", "awsbatch", "google_batch", "azurebatch", "head"}
    assert "azure.managedIdentity.system = true" in profiles["head"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_nextflow_before_scripts_start_the_wrapper_and_parse_as_bash() -> None:
    for name, body in nextflow_profiles().items():
        scripts = re.findall(r"process\.beforeScript = '''(.*?)'''", body, flags=re.DOTALL)
        if name == "head":
            assert not scripts  # the head job has its own sidecar
            continue
        (script,) = scripts
        subprocess.run(["bash", "-n", "-c", script], check=True)
        # --exit-with $$: tied to the task's shell whatever shell forks for $(...).
        start = r"env_text=\$\(credsidecar start --exit-with \$\$ --token-(file|env) "
        assert re.search(start, script), name
        assert ") || exit 1\n" in script, f"{name}: a task must not run without its sidecar"
        assert 'eval "$env_text"' in script
        assert '--run-dir "$(mktemp -d)/credsidecar"' in script
        if "--token-env" in script:
            assert "unset CREDSIDECAR_LAUNCH_TOKEN" in script
        shared_loopback = name in ("awsbatch", "google_batch", "azurebatch")
        assert ("--secret-only" in script) is shared_loopback, name


def test_nextflow_config_sets_none_of_the_sidecars_variables() -> None:
    code = _strip_comments_and_strings(nextflow_config())
    assert not re.search(r"\benv\s*\{", code) and "env." not in code
    for prefix in SIDECAR_VARIABLE_PREFIXES:
        assert prefix not in code, prefix
    assert "accessKey" not in code and "secretKey" not in code


# --- Every credsidecar command line in deploy/ is one credsidecar accepts -----------------


def _serve_config(words: list[str], env: dict[str, str] | None = None) -> Any:
    """`serve`'s (or `start`'s) flags through credsidecar's own option table."""
    import argparse

    from credsidecar.config import add_sidecar_arguments, from_args

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_sidecar_arguments(parser, env or {})
    parser.add_argument("--wait", type=float)  # `start`/`run` only (launcher.py)
    parser.add_argument("--log-file")
    return from_args(parser.parse_args(words))


def _start_words(script: str) -> list[str]:
    """The flags of the `credsidecar start` in `env_text=$(credsidecar start ...) || exit 1`."""
    import shlex

    match = re.search(r"\$\(credsidecar start (.*?)\) \|\| exit 1", script)
    assert match, script
    # What the shell would substitute: the shell's PID, mktemp's directory, Batch's variable.
    text = match.group(1).replace("$$", "4242").replace("$(mktemp -d)", "/tmp/tmp.X")
    text = text.replace("$AZ_BATCH_TASK_WORKING_DIR", "/mnt/batch/tasks/workitems/j/job-1/t")
    return shlex.split(text)


def test_kubernetes_sidecar_command_lines_parse_with_credsidecars_options() -> None:
    import shlex

    for name, doc in PIPELINE_DOCS:
        spec = pod_spec(doc)
        assert spec is not None
        for container in credsidecar_containers(spec):
            if "args" in container and container["args"][0] == "serve":
                config = _serve_config(container["args"][1:])
            else:  # the classic pod's shell: `exec credsidecar serve --exit-with "$pid" ...`
                script = container["args"][0].replace("\\\n", " ")
                line = next(x for x in script.splitlines() if "exec credsidecar serve" in x)
                words = shlex.split(line.replace('"$pid"', "4242"))
                config = _serve_config(words[words.index("serve") + 1 :])
                assert config.exit_with == 4242
            assert str(config.run_dir) == "/run/credsidecar/sidecar", name
            assert str(config.env_file) == "/job-env/env", name
            assert config.secret_only is False, name  # a pod's network namespace is the job's


def test_batch_sidecar_command_lines_parse_with_credsidecars_options() -> None:
    (task,) = aws_job_definition()["ecsProperties"]["taskProperties"]
    sidecar = {c["name"]: c for c in task["containers"]}["sidecar"]
    aws = _serve_config(sidecar["command"][1:])
    assert aws.secret_only is True and aws.token_env == "CREDSIDECAR_LAUNCH_TOKEN"

    google = json.loads(google_job_text())["taskGroups"][0]["taskSpec"]["runnables"][1]
    gcp = _serve_config(google["container"]["commands"][1:])
    assert gcp.secret_only is True and str(gcp.env_file) == "/run/credsidecar/env"

    job_env = {s["name"]: s["value"] for s in azure_json("job.json")["commonEnvironmentSettings"]}
    azure = _serve_config(_start_words(azure_json("task.json")["commandLine"]), job_env)
    assert azure.secret_only is True and azure.exit_with == 4242
    assert str(azure.run_dir).endswith("/credsidecar")


def test_nextflow_before_scripts_parse_with_credsidecars_options() -> None:
    for name, body in nextflow_profiles().items():
        for script in re.findall(r"process\.beforeScript = '''(.*?)'''", body, flags=re.DOTALL):
            config = _serve_config(_start_words(script))
            assert config.exit_with == 4242 and str(config.run_dir).startswith("/tmp/tmp.X/")
            assert config.secret_only is (name != "k8s"), name


def test_aws_batch_job_waits_with_a_credsidecar_env_command_line_it_accepts() -> None:
    import argparse
    import shlex

    from credsidecar.config import add_env_command_arguments, env_command_from_args

    (task,) = aws_job_definition()["ecsProperties"]["taskProperties"]
    script = {c["name"]: c for c in task["containers"]}["job"]["command"][-1]
    match = re.search(r"\$\(credsidecar env (.*?)\)", script)
    assert match
    parser = argparse.ArgumentParser()
    add_env_command_arguments(parser, {})
    config = env_command_from_args(parser.parse_args(shlex.split(match.group(1))))
    assert str(config.run_dir) == "/credsidecar/run" and config.wait == 60


def test_kubernetes_probe_command_runs_and_reports_not_ready(tmp_path: Path) -> None:
    """The probe as written is a valid command: exit 1 (not ready), not 2 (usage error)."""
    import sys

    for name, doc in PIPELINE_DOCS:
        spec = pod_spec(doc)
        assert spec is not None
        for container in credsidecar_containers(spec):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in container:
                    continue
                command = list(container[probe]["exec"]["command"])
                assert command[0] == "credsidecar", name
                run_dir = tmp_path / "missing"
                command[command.index("--run-dir") + 1] = str(run_dir)
                done = subprocess.run(
                    [sys.executable, "-m", "credsidecar", *command[1:]],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert done.returncode == 1, f"{name} {probe}: {done.stderr}"


def test_well_known_job_adds_the_addresses_to_the_pods_loopback_and_nothing_more() -> None:
    """NET_ADMIN for one init container that only runs `ip addr add ... dev lo`; no host
    network, no iptables; the sidecar binds port 80 unprivileged through the pod's sysctl."""
    doc = dict(K8S_DOCS)["well-known-job.yaml:Job/pipeline-run-r1-well-known"]
    spec = pod_spec(doc)
    assert spec is not None
    assert not spec.get("hostNetwork") and spec["automountServiceAccountToken"] is False
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.ip_unprivileged_port_start": "80"}
    assert spec["hostAliases"] == [
        {"ip": "169.254.169.254", "hostnames": ["metadata.google.internal"]}
    ]
    addresses, sidecar = spec["initContainers"]
    script = " ".join(addresses["args"])
    for address in ("169.254.169.254/32 dev lo", "169.254.170.2/32 dev lo", "fd00:ec2::254/128"):
        assert f"addr add {address}" in script
    assert "iptables" not in script and "restartPolicy" not in addresses
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert addresses["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert addresses["securityContext"]["allowPrivilegeEscalation"] is False
    # Every other container: uid 65532, no capability at all.
    assert sidecar["restartPolicy"] == "Always" and "--well-known" in sidecar["args"]
    for container in (sidecar, *spec["containers"]):
        sc = container["securityContext"]
        assert sc["runAsUser"] == SIDECAR_UID and sc["capabilities"] == {"drop": ["ALL"]}
    # The job is given nothing of credsidecar's: no variable, no env file.
    (job,) = spec["containers"]
    assert not [e for e in job.get("env", []) if e["name"].startswith(SIDECAR_VARIABLE_PREFIXES)]
    assert "job-env" not in {m["name"] for m in job["volumeMounts"]}


def test_netns_script_is_valid_shell_and_touches_only_the_namespace() -> None:
    subprocess.run(["sh", "-n", str(NETNS_SCRIPT)], check=True)
    lines = NETNS_SCRIPT.read_text(encoding="utf-8").splitlines()
    script = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert "iptables" not in script and "dev lo" in script
    assert "net.ipv4.ip_unprivileged_port_start=80" in script
