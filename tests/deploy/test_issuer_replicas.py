"""deploy/kubernetes/issuer-replicas.yaml: two issuer replicas on PostgreSQL (the strict schema
check and the no-secret-values check of test_manifests.py cover it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "issuer-replicas.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    loaded = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in loaded}


def test_the_config_names_a_postgresql_store_a_kek_and_a_worker_per_requested_core(
    docs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from credsidecar.issuer.config import load_config
    from credsidecar.issuer.policy import load_policy

    for name, text in docs["ConfigMap/credsidecar-issuer"]["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "issuer.toml")
    assert config.store.postgres and config.store.password_env == "CREDSIDECAR_DB_PASSWORD"
    # One worker per core the pod requests ("auto" would count every core of the node).
    container = docs["Deployment/credsidecar-issuer"]["spec"]["template"]["spec"]["containers"][0]
    assert config.workers == int(container["resources"]["requests"]["cpu"])
    assert config.kek_env == "CREDSIDECAR_HPC_KEK" and config.kek_file is None
    assert load_policy(config.policy_path) is not None


def test_two_replicas_on_different_nodes_with_the_secrets_as_variables(
    docs: dict[str, dict[str, Any]],
) -> None:
    deployment = docs["Deployment/credsidecar-issuer"]
    assert deployment["spec"]["replicas"] == 2
    spec = deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])  # state is in the db
    (issuer,) = spec["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert issuer[probe]["httpGet"]["path"] == "/healthz"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in issuer["env"]}
    assert refs["CREDSIDECAR_DB_PASSWORD"]["name"] == "credsidecar-issuer"
    assert refs["CREDSIDECAR_HPC_KEK"] == {"name": "credsidecar-issuer", "key": "kek"}  # required


def test_a_disruption_budget_and_a_service_cover_the_replicas(
    docs: dict[str, dict[str, Any]],
) -> None:
    labels = docs["Deployment/credsidecar-issuer"]["spec"]["template"]["metadata"]["labels"]
    budget = docs["PodDisruptionBudget/credsidecar-issuer"]["spec"]
    assert budget["minAvailable"] == 1 and budget["selector"]["matchLabels"] == labels
    assert docs["Service/credsidecar-issuer"]["spec"]["selector"] == labels
