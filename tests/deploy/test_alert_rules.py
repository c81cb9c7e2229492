"""The alert rules and the model dashboard: promtool checks and unit-tests the rules
(deploy/prometheus/alerts_test.yml), Prometheus in the compose monitoring profile loads them,
and every series they and the dashboard read is one the service exports.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it); without it these
tests fail rather than skip, so CI never passes with the rules unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT as ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
MODEL_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "dfd-model.json"
# Series Prometheus itself makes, and suffixes prometheus-client adds on exposition.
BUILTIN_SERIES = {"up"}
SUFFIXES = re.compile(r"_(total|bucket|sum|count)$")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian ships promtool in it)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_expectation_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: a drift alert expected on a feature that did not drift."""
    shutil.copy(RULES, tmp_path / "alerts.yml")
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    broken = tests.replace("feature: brightness", "feature: sharpness")
    assert broken != tests
    (tmp_path / "alerts_test.yml").write_text(broken)
    result = _run(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0 and "DFDInputDrift" in result.stdout + result.stderr


def test_prometheus_in_compose_loads_the_rules(promtool: str, tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in prometheus["volumes"] if "/" in volume)
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (rule_file,) = config["rule_files"]
    assert mounts["./deploy/prometheus/alerts.yml"] == rule_file
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    # The config as the container sees it, with the rules where it mounts them.
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    shutil.copy(RULES, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def _alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_the_rules_cover_what_an_operator_is_paged_for() -> None:
    alerts = _alerts()
    assert {
        "DFDHighErrorRate",
        "DFDHighLatencyP99",
        "DFDQueueSaturated",
        "DFDLoadShedding",
        "DFDReadinessFlapping",
        "DFDInputDrift",
        "DFDVersionFakeShareDiverges",
    } <= set(alerts)
    drift = alerts["DFDInputDrift"]
    assert drift["expr"] == "dfd_drift_psi > 0.2" and drift["for"] == "15m"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name  # type: ignore[index]
        assert rule["annotations"]["summary"], name  # type: ignore[index]


def _series(expression: str) -> set[str]:
    names = set(re.findall(r"\b(dfd_\w+|up)\b", expression))
    return {SUFFIXES.sub("", name) for name in names}


def _exported() -> set[str]:
    source = (ROOT / "src" / "serve" / "metrics.py").read_text()
    return set(re.findall(r'"(dfd_\w+)"', source)) | BUILTIN_SERIES


def test_every_series_the_rules_read_is_exported() -> None:
    used = set().union(*(_series(str(rule["expr"])) for rule in _alerts().values()))
    assert used - _exported() == set()
    assert {"dfd_drift_psi", "dfd_inference_pending", "dfd_inference_capacity"} <= used


def test_the_model_dashboard_shows_drift_and_each_version() -> None:
    dashboard = json.loads(MODEL_DASHBOARD.read_text())
    datasource = yaml.safe_load(
        (
            ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
        ).read_text()
    )["datasources"][0]
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == datasource["uid"] for panel in dashboard["panels"])
    used = set().union(*(_series(expr) for expr in exprs))
    assert used - _exported() == set()
    assert {"dfd_drift_psi", "dfd_drift_ks", "dfd_model_info"} <= used
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    assert "drift psi" in titles and "by model version" in titles
    assert sum("group_left (version) dfd_model_info" in expr for expr in exprs) >= 3
