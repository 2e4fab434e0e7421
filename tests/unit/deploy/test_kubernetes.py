"""deploy/kubernetes/, checked without a cluster: every built-in object validates against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict), and the KEDA and Prometheus
Operator objects, which it has no schemas for, are checked field by field against the code:
the topics are the ones streaminfer's own naming function makes for the tasks each worker
Deployment serves, the consumer group is the one the code derives, replicas stay within the
partitions, the metric queried is one the gateway exports; env names are real settings, probes
hit real routes, grace periods outlast the drains."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streaminfer.models import builtin
from streaminfer.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # kubernetes-validate ships this version's schemas (no network needed)
BUILTIN_TASKS = set(builtin.BUILTIN_TASKS)
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


def _module(name: str):
    """``streaminfer.<name>``, or the top-level ``<name>`` while the packages are being moved."""
    try:
        return importlib.import_module(f"streaminfer.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(name)


def _load() -> dict[str, list[dict]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


FILES = _load()
OBJECTS = [obj for docs in FILES.values() for obj in docs]
KUSTOMIZATION = yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def _objects(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


CONFIG = _objects("ConfigMap")["streaminfer-config"]["data"]
SECRETS = _objects("Secret")
DEPLOYMENTS = _objects("Deployment")
SCALED_OBJECTS = _objects("ScaledObject")
WORKERS = {
    name: d
    for name, d in DEPLOYMENTS.items()
    if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"
}


def _pod_specs() -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in OBJECTS if o["kind"] in ("Deployment", "Job")]


def _container_env(deployment: dict) -> dict[str, str]:
    """What the container's environment holds: the ConfigMap (envFrom), overridden by env values
    (secretKeyRef values resolved from the Secret templates)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_objects("ConfigMap")[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRETS[ref["name"]]["stringData"][ref["key"]]
    return env


def _settings(env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings from a container's STREAMINFER_* environment; the mounted files it names are
    stood in for by empty files (the settings check that they exist)."""
    values = {}
    for key, value in env.items():
        if not key.startswith("STREAMINFER_"):
            continue
        name = key.removeprefix("STREAMINFER_").lower()
        if name.endswith(("_cafile", "_certfile", "_keyfile")):
            stand_in = tmp_path / name
            stand_in.write_text("")
            value = str(stand_in)
        values[name] = value
    return Settings(**values)


# --- kustomization and built-in kinds ------------------------------------------------------


def test_kustomization_lists_every_manifest_and_only_existing_files():
    resources = KUSTOMIZATION["resources"]
    assert len(resources) == len(set(resources))
    for name in resources:
        assert (KUBE / name).is_file(), name
    assert set(resources) == set(FILES), set(FILES) ^ set(resources)
    assert KUSTOMIZATION["namespace"] == "streaminfer"
    images = {i["name"] for i in KUSTOMIZATION["images"]}
    used = {c["image"] for spec in _pod_specs() for c in spec["containers"]}
    assert used <= images, used - images


@pytest.mark.parametrize(
    "obj",
    [o for o in OBJECTS if o["kind"] not in CRD_KINDS],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(obj):
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_only_known_crd_kinds_are_left_unvalidated():
    kinds = {o["kind"]: o["apiVersion"] for o in OBJECTS if o["kind"] in CRD_KINDS}
    assert kinds == {
        "ScaledObject": "keda.sh/v1alpha1",
        "TriggerAuthentication": "keda.sh/v1alpha1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
    }


def test_the_validator_rejects_a_broken_manifest():
    """The schema check really checks (strict: an unknown field fails)."""
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENTS["streaminfer-gateway"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = (
        "/ready"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- settings -----------------------------------------------------------------------------


def test_environment_names_are_settings():
    fields = {f"STREAMINFER_{name.upper()}" for name in Settings.model_fields}
    used = set(CONFIG)
    for spec in _pod_specs():
        for container in spec["containers"]:
            used |= {item["name"] for item in container.get("env", [])}
    for secret in SECRETS.values():
        used |= set(secret.get("stringData", {}))
    used = {name for name in used if name.startswith("STREAMINFER_")}
    assert used and used <= fields, used - fields


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployments_environment_is_valid_settings(name, tmp_path):
    settings = _settings(_container_env(DEPLOYMENTS[name]), tmp_path)
    assert settings.topic_partitions == int(CONFIG["STREAMINFER_TOPIC_PARTITIONS"])
    assert settings.auth and settings.auth != "disabled", "the gateway on 0.0.0.0 authenticates"


def test_mounted_files_are_mounted_where_the_settings_point():
    paths = {v for k, v in CONFIG.items() if k.endswith(("_CAFILE", "_CERTFILE", "_KEYFILE"))}
    for spec in _pod_specs():
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0].get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for path in paths:
            directory, _, filename = path.rpartition("/")
            volume = next((n for n, p in mounts.items() if p == directory), None)
            assert volume is not None, f"{path} not mounted"
            secret = SECRETS[volumes[volume]["secret"]["secretName"]]
            assert filename in secret["stringData"], path


def test_secrets_are_templates_marked_replace():
    for name, secret in SECRETS.items():
        for key, value in secret["stringData"].items():
            if key not in ("sasl", "tls"):  # KEDA's spelling of settings in the ConfigMap
                assert "REPLACE" in value, f"{name}/{key}"


def test_gateway_and_worker_settings_of_the_spec():
    gateway = _container_env(DEPLOYMENTS["streaminfer-gateway"])
    assert gateway["STREAMINFER_GATEWAY_HOST"] == "0.0.0.0"
    assert set(gateway["STREAMINFER_TASKS"].split(",")) == BUILTIN_TASKS
    for deployment in WORKERS.values():
        env = _container_env(deployment)
        assert env["STREAMINFER_WORKER_METRICS_HOST"] == "0.0.0.0"
    gpu = _container_env(DEPLOYMENTS["streaminfer-worker-gpu"])
    assert gpu["STREAMINFER_DEVICE"] == "cuda"
    served = [set(_container_env(d)["STREAMINFER_TASKS"].split(",")) for d in WORKERS.values()]
    assert set().union(*served) == BUILTIN_TASKS, "every task has workers"
    assert sum(map(len, served)) == len(BUILTIN_TASKS), (
        "one group: each task in one Deployment only"
    )


# --- pods ---------------------------------------------------------------------------------


def test_gateway_probes_hit_routes_that_exist():
    routes = {route.path for route in _module("gateway.routes").router.routes}
    container = DEPLOYMENTS["streaminfer-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["gateway"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    assert {"/metrics", "/ready", "/health"} <= routes
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(CONFIG["STREAMINFER_GATEWAY_PORT"])


def test_worker_ports_and_probes():
    for deployment in WORKERS.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
        assert port == int(_container_env(deployment)["STREAMINFER_WORKER_METRICS_PORT"])
        assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_grace_periods_outlast_the_drains():
    # A worker's shutdown drains each model's batcher for up to drain()'s timeout (serving a task
    # may hold two versions during a reload), then flushes and leaves the group.
    drain_s = (
        inspect.signature(_module("streams.batcher").InferenceBatcher.drain)
        .parameters["timeout_s"]
        .default
    )
    assert drain_s > 0
    for name, deployment in WORKERS.items():
        tasks = _container_env(deployment)["STREAMINFER_TASKS"].split(",")
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > 2 * drain_s * len(tasks) + 15, name
    gateway = DEPLOYMENTS["streaminfer-gateway"]
    env = _container_env(gateway)
    pod = gateway["spec"]["template"]["spec"]
    pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > float(env["STREAMINFER_MAX_WAIT_S"]) + pause


def test_security_context_and_resources():
    for spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_gpu_worker():
    pod = DEPLOYMENTS["streaminfer-worker-gpu"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "streaminfer-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert all(
        c["image"] == "streaminfer"
        for name, d in DEPLOYMENTS.items()
        if name != "streaminfer-worker-gpu"
        for c in d["spec"]["template"]["spec"]["containers"]
    )


def test_jobs():
    jobs = {
        j["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["topics", "create"]: j
        for j in _objects("Job").values()
    }
    assert True in jobs, "a topic-init Job"
    keys = [
        j
        for j in _objects("Job").values()
        if j["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["keys", "create"]
    ]
    assert keys and "--if-absent" in keys[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_services_pdbs_and_hpa_select_real_pods():
    def labels(d):
        return d["spec"]["template"]["metadata"]["labels"]

    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in _objects(kind).items():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels(d).items() for d in DEPLOYMENTS.values()), (
                f"{kind}/{name}"
            )
    pdbs = [o["spec"]["selector"]["matchLabels"] for o in _objects("PodDisruptionBudget").values()]
    for deployment in DEPLOYMENTS.values():
        assert any(p.items() <= labels(deployment).items() for p in pdbs), deployment["metadata"][
            "name"
        ]
    hpa = _objects("HorizontalPodAutoscaler")["streaminfer-gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] in DEPLOYMENTS
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    worker_metrics = _objects("Service")["streaminfer-worker-metrics"]
    assert worker_metrics["spec"]["clusterIP"] == "None"
    for deployment in WORKERS.values():
        assert worker_metrics["spec"]["selector"].items() <= labels(deployment).items()


def test_service_monitors_scrape_named_ports():
    services = _objects("Service")
    monitors = _objects("ServiceMonitor")
    assert {"streaminfer-gateway", "streaminfer-worker"} <= set(monitors)
    for name, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert matched, name
        ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# --- KEDA ---------------------------------------------------------------------------------


def _triggers(scaled: dict, kind: str) -> list[dict]:
    return [t for t in scaled["spec"]["triggers"] if t["type"] == kind]


def test_every_worker_deployment_has_a_scaled_object():
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in SCALED_OBJECTS.values()}
    assert targets == set(WORKERS)
    for scaled in SCALED_OBJECTS.values():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["scaleTargetRef"]["name"] in DEPLOYMENTS


@pytest.mark.parametrize("name", sorted(SCALED_OBJECTS))
def test_kafka_triggers_match_the_topics_and_group_of_the_code(name, tmp_path):
    topics = _module("schemas.topics")
    scaled = SCALED_OBJECTS[name]
    deployment = DEPLOYMENTS[scaled["spec"]["scaleTargetRef"]["name"]]
    settings = _settings(_container_env(deployment), tmp_path)
    tasks = settings.task_list
    assert tasks and set(tasks) <= BUILTIN_TASKS
    expected = {
        topics.request_topic(settings.topic_prefix, task, p): (task, p.topic_suffix)
        for task in tasks
        for p in topics.PRIORITIES
    }
    kafka = _triggers(scaled, "kafka")
    seen = [t["metadata"]["topic"] for t in kafka]
    assert sorted(seen) == sorted(expected), "one trigger per request topic of the tasks served"
    auths = _objects("TriggerAuthentication")
    by_priority: dict[str, dict[str, int]] = {}
    for trigger in kafka:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == settings.group_id
        assert meta["limitToPartitionsWithLag"] == "true"
        assert int(meta["activationLagThreshold"]) >= 0
        assert meta.get("offsetResetPolicy") == "earliest"
        assert meta["bootstrapServersFromEnv"] in _container_env(deployment)
        assert trigger["authenticationRef"]["name"] in auths
        task, priority = expected[meta["topic"]]
        by_priority.setdefault(task, {})[priority] = int(meta["lagThreshold"])
    for task, lag in by_priority.items():
        assert lag["high"] < lag["normal"] <= lag["low"], task
    assert 1 <= scaled["spec"]["maxReplicaCount"] <= settings.topic_partitions
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def _exported_metrics() -> set[str]:
    source = Path(inspect.getsourcefile(_module("gateway.metrics"))).read_text()
    names = set(re.findall(r'(?:Counter|Gauge|Histogram|Summary)\(\s*"([a-z_:]+)"', source))
    assert "inference_drain_seconds" in names
    return names


@pytest.mark.parametrize("name", sorted(SCALED_OBJECTS))
def test_prometheus_trigger_queries_a_metric_the_gateway_exports(name):
    exported = _exported_metrics()
    (trigger,) = _triggers(SCALED_OBJECTS[name], "prometheus")
    query = trigger["metadata"]["query"]
    used = set(re.findall(r"\b(inference_[a-z_]+)\b", query))
    assert "inference_drain_seconds" in used and used <= exported, used - exported
    deployment = DEPLOYMENTS[SCALED_OBJECTS[name]["spec"]["scaleTargetRef"]["name"]]
    tasks = set(_container_env(deployment)["STREAMINFER_TASKS"].split(","))
    selected = re.search(r'task=~"([^"]+)"', query).group(1).split("|")
    assert set(selected) == tasks
    assert float(trigger["metadata"]["threshold"]) > 0


def test_trigger_authentication_reads_existing_secret_keys():
    for auth in _objects("TriggerAuthentication").values():
        params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert {"sasl", "username", "password", "tls", "ca"} <= params
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in SECRETS[ref["name"]]["stringData"], ref
    sasl = SECRETS["streaminfer-kafka-sasl"]["stringData"]
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert sasl["sasl"] == keda_sasl[CONFIG["STREAMINFER_KAFKA_SASL_MECHANISM"]]
    assert (sasl["tls"] == "enable") == CONFIG["STREAMINFER_KAFKA_SECURITY_PROTOCOL"].endswith(
        "SSL"
    )
