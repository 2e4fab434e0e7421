"""The production shape, checked without a Docker engine: docker-compose.yml parses, names the
services the spec asks for, uses only settings that exist, and every file it references exists;
Prometheus scrapes the ports the services bind; the Grafana dashboard queries real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streaminfer.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_of_the_production_shape():
    assert {"kafka", "redis", "topic-init", "gateway", "worker", "prometheus", "grafana"} <= set(
        SERVICES
    )
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka")
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert "ports" not in SERVICES["worker"] and "container_name" not in SERVICES["worker"], (
        "workers must scale with --scale worker=N"
    )
    assert SERVICES["topic-init"]["command"] == ["topics", "create"]
    for name in ("gateway", "worker"):
        assert (
            SERVICES[name]["depends_on"]["topic-init"]["condition"]
            == "service_completed_successfully"
        )


def test_environment_names_are_settings():
    fields = {f"STREAMINFER_{name.upper()}" for name in Settings.model_fields}
    used = {
        key
        for service in SERVICES.values()
        for key in (service.get("environment") or {})
        if key.startswith("STREAMINFER_")
    }
    assert used and used <= fields, used - fields
    env = SERVICES["gateway"]["environment"]
    Settings(
        **{k.removeprefix("STREAMINFER_").lower(): v for k, v in env.items()}
    )  # values validate too


def test_secure_by_default():
    env = SERVICES["gateway"]["environment"]
    assert env["STREAMINFER_AUTH"] != "disabled", "the gateway on 0.0.0.0 authenticates"
    assert "ALLOW_INSECURE_BIND" not in " ".join(env)
    redis = SERVICES["redis"]
    assert "ports" not in redis, "Redis is reachable only on the compose network"
    assert "--requirepass" in redis["command"]
    assert "${STREAMINFER_REDIS_PASSWORD:?" in env["STREAMINFER_REDIS_URL"], "no default password"
    assert (
        SERVICES["keys-init"]["command"][:2] == ["keys", "create"]
        and "--admin" in SERVICES["keys-init"]["command"]
    )
    assert (
        SERVICES["gateway"]["depends_on"]["keys-init"]["condition"]
        == "service_completed_successfully"
    )
    for name, service in SERVICES.items():
        if "ports" in service:
            assert name in {"gateway", "kafka", "prometheus", "grafana"}, name


def test_referenced_files_exist():
    for service in SERVICES.values():
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (context / dockerfile).is_file(), dockerfile
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (ROOT / host).exists(), host


def test_prometheus_scrapes_the_bound_ports():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    env = SERVICES["gateway"]["environment"]
    assert jobs["gateway"]["static_configs"][0]["targets"] == [
        f"gateway:{env['STREAMINFER_GATEWAY_PORT']}"
    ]
    worker_sd = jobs["worker"]["dns_sd_configs"][0]
    assert worker_sd["port"] == int(env["STREAMINFER_WORKER_METRICS_PORT"])
    assert env["STREAMINFER_WORKER_METRICS_HOST"] == "0.0.0.0", (
        "scrapable from the Prometheus container"
    )
    assert set(worker_sd["names"]) <= set(SERVICES)


def test_dashboard_queries_metrics_that_exist():
    from streaminfer.gateway import metrics as gateway_metrics
    from streaminfer.streams import metrics as worker_metrics

    known = {
        m.name
        for registry in (gateway_metrics.REGISTRY, worker_metrics.REGISTRY)
        for m in registry.collect()
    }
    dashboard = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "streaminfer.json").read_text()
    )
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "batch size", "lag", "errors"):
        assert topic in titles
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"\b(inference_[a-z_]+)", target["expr"]):
                base = re.sub(r"_(bucket|sum|count|total)$", "", metric)
                assert base in known or metric in known, metric
