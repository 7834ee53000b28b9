"""docs/kubernetes, checked offline: KubeRay's RayJob and RayCluster against the CRDs' schemas vendored in
docs/kubernetes/schemas (unknown fields rejected), the built-in kinds with `kubernetes-validate --strict`, the
Dockerfile with hadolint; then what the files must agree on with the project (the pinned versions, the study, the
MLflow server's command) and that no secret is written into them."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docs" / "kubernetes"
CUSTOM = {"rayjob.yaml": "RayJob", "raycluster.yaml": "RayCluster"}
BUILTIN = ["postgres.yaml", "mlflow.yaml", "workers-job.yaml"]
# the oldest Kubernetes the manifests are meant for (Indexed Jobs' backoffLimitPerIndex), and the newest bundled
KUBERNETES_VERSIONS = ["1.29", "1.37"]
SECRET_ENV = {"OPTUNA_STORAGE", "POSTGRES_PASSWORD", "MLFLOW_BACKEND_STORE_URI"}


# helpers


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def only(name: str) -> dict[str, Any]:
    (doc,) = docs(name)
    return doc


def validator(kind: str) -> Draft7Validator:
    return Draft7Validator(json.loads((K8S / "schemas" / f"{kind.lower()}-v1.json").read_text()))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(doc["kind"]).iter_errors(doc)]


def tool(name: str) -> str:
    """A command of this environment (the `test` extra installs it)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{name} is missing: .venv/bin/pip install -e '.[test]'")
    return str(path)


def kubernetes_validate(*files: Path, version: str) -> subprocess.CompletedProcess[str]:
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet", "--kubernetes-version", version, *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def pin(name: str) -> str:
    """The version pyproject.toml pins `name` to (==)."""
    (version,) = set(
        re.findall(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^";]+)"', (ROOT / "pyproject.toml").read_text())
    )
    return version


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", (K8S / "Dockerfile").read_text(), re.M)
    return value


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a document or schema, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for m in walk(doc) for c in m.get("containers", []) if isinstance(c, dict)]


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path (list indices as numbers) set to value."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return doc


# the schemas


@pytest.mark.parametrize("name", CUSTOM)
def test_custom_resources_match_kuberays_schemas(name: str) -> None:
    doc = only(name)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", CUSTOM[name])
    assert schema_errors(doc) == []
    # the CRDs leave the top-level metadata open (the API server checks it): only what a manifest sets
    assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}


HEAD = "spec.rayClusterSpec.headGroupSpec"
WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        pytest.param("spec.entrypointt", "cvae sweep", "'entrypointt' was unexpected", id="misspelt-top-field"),
        pytest.param(f"{WORKER}.minReplica", 0, "'minReplica' was unexpected", id="misspelt-worker-field"),
        pytest.param(
            f"{HEAD}.template.spec.containers.0.imagePullPolice",
            "Always",
            "'imagePullPolice' was unexpected",
            id="unknown-field-deep-in-a-container",
        ),
        pytest.param(f"{WORKER}.maxReplicas", "8", "'8' is not of type 'integer'", id="wrong-type"),
        pytest.param(f"{HEAD}.rayStartParams.num-cpus", 0, "0 is not of type 'string'", id="ray-param-not-a-string"),
    ],
)
def test_a_wrong_field_in_a_rayjob_is_caught(path: str, value: Any, expected: str) -> None:
    errors = schema_errors(set_path(only("rayjob.yaml"), path, value))
    assert any(expected in e for e in errors), errors


def test_vendored_schemas_say_their_source_and_reject_unknown_fields() -> None:
    for kind in CUSTOM.values():
        schema = validator(kind).schema
        assert "ray-project/kuberay" in schema["$comment"] and "openAPIV3Schema" in schema["$comment"]
        Draft7Validator.check_schema(schema)
        open_objects = [
            sorted(m["properties"])[:3]
            for m in walk(schema)
            if isinstance(m.get("properties"), dict)
            and m.get("type") == "object"
            and m.get("additionalProperties") is not False
            and not m.get("x-kubernetes-preserve-unknown-fields")
        ]
        assert open_objects == [], f"{kind}: objects that accept unknown fields: {open_objects[:5]}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_pass_kubernetes_validate_strict(version: str) -> None:
    proc = kubernetes_validate(*(K8S / n for n in BUILTIN), version=version)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    service, deployment, *rest = docs("mlflow.yaml")[1:]
    bad = set_path(deployment, "spec.template.spec.containers.0.readinesProbe", {"periodSeconds": 5})
    (tmp_path / "mlflow.yaml").write_text(yaml.safe_dump_all([service, bad, *rest]))
    proc = kubernetes_validate(tmp_path / "mlflow.yaml", version=KUBERNETES_VERSIONS[-1])
    assert proc.returncode != 0 and "readinesProbe" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    # run from an empty folder: no .hadolint.yaml of the user's turns a rule off
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", str(K8S / "Dockerfile")], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# what the files must agree on


def test_versions_follow_pyproject() -> None:
    assert dockerfile_arg("TORCH_VERSION") == pin("torch")
    assert dockerfile_arg("RAY_VERSION") == pin("ray")
    assert only("rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == pin("ray")
    assert only("raycluster.yaml")["spec"]["rayVersion"] == pin("ray")


def test_dockerfile_copies_only_what_its_ignore_file_lets_in() -> None:
    allowed = {line[1:] for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {
        src
        for line in (K8S / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    }
    assert copied and copied <= allowed, copied - allowed
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^USER \d+$", text, re.M), "a numeric non-root USER (runAsNonRoot can check it)"
    assert "USER 0" not in text and "USER root" not in text


def test_rayjob_runs_the_study_on_an_autoscaling_gpu_group() -> None:
    job = only("rayjob.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["cvae", "sweep"] and argv[argv.index("--ray") + 1] == "auto"
    assert (ROOT / "sweeps" / "studies" / f"{argv[2]}.yaml").is_file()
    assert job["shutdownAfterJobFinishes"] is True
    cluster = job["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no worker lands on the head
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= group["replicas"] > 0
    (worker,) = containers(group)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    # the driver on the head reads the storage URL from its environment
    (head,) = containers(cluster["headGroupSpec"])
    assert {e["name"] for e in head["env"]} >= {"OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"}


def test_raycluster_is_the_rayjobs_cluster_idle() -> None:
    job_cluster = only("rayjob.yaml")["spec"]["rayClusterSpec"]
    cluster = only("raycluster.yaml")["spec"]
    assert cluster["workerGroupSpecs"][0]["replicas"] == 0
    assert set_path(cluster, "workerGroupSpecs.0.replicas", job_cluster["workerGroupSpecs"][0]["replicas"]) == (
        job_cluster
    )


def test_no_secret_is_written_into_the_files() -> None:
    for name in [*CUSTOM, *BUILTIN]:
        text = (K8S / name).read_text()
        assert not re.search(r"postgres(ql)?(\+\w+)?://", text), f"{name}: a database URL belongs in the Secret"
        for doc in docs(name):
            for container in containers(doc):
                for env in container.get("env", []):
                    if env["name"] in SECRET_ENV:
                        assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "cvae-sweep", env
    # KubeRay pastes the entrypoint into the submitter's shell and Ray's dashboard shows it: no variable, no URL
    assert not re.search(r"\$|://", only("rayjob.yaml")["spec"]["entrypoint"])
    dockerfile = (K8S / "Dockerfile").read_text()
    assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|SECRET|TOKEN|STORAGE)", dockerfile, re.M | re.I)


def test_mlflow_server_command_parses_and_answers_its_service_name() -> None:
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    (container,) = containers(docs("mlflow.yaml")[2])
    assert container["command"][:2] == ["mlflow", "server"]
    params = server.make_context("server", container["command"][2:]).params
    assert params["serve_artifacts"] and params["artifacts_destination"] == "/mlartifacts"
    allowed = params["allowed_hosts"].split(",")
    # the Host headers of MLFLOW_TRACKING_URI=http://mlflow:5000, the service's full name, and a port-forward
    for host in ["mlflow:5000", "mlflow.cvae.svc.cluster.local:5000", "localhost:5000"]:
        assert is_allowed_host_header(allowed, host), host
