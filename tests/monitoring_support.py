"""Shared by the monitoring tests: the real Prometheus tools, the repo's monitoring
files, and the PromQL the Grafana dashboard runs."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ARTIFACTS, REPO, ROOT, free_port

MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
RECORDING_RULES = MONITORING / "recording_rules.yml"
ALERT_RULES = MONITORING / "alert_rules.yml"
ALERT_TESTS = MONITORING / "alert_rules_test.yml"
TRITON_RULES = MONITORING / "triton_compat_rules.yml"
TRITON_TESTS = MONITORING / "triton_compat_rules_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "servekit.json"


def ensure_prometheus() -> tuple[str, str]:
    """The paths of `prometheus` and `promtool`, installing Debian's package if missing."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    if os.geteuid() != 0:
        pytest.fail("prometheus/promtool missing: apt-get install prometheus (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool, "the prometheus package installed no prometheus/promtool"
    return prometheus, promtool


def make_model_repo(root: Path, configs: dict[str, str]) -> Path:
    """A model repository of copies of the digits model, each with its config.yaml."""
    for name, config in configs.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(REPO / "digits" / "1" / "model.tflite", root / name / "1" / "model.tflite")
        (root / name / "config.yaml").write_text(config)
    return root


# -- the dashboard's PromQL ------------------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    panel: str
    ref_id: str
    expr: str


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[DashboardQuery]:
    """Every target of every panel, rows' nested panels included."""
    out: list[DashboardQuery] = []
    stack = list(dashboard()["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for t in panel.get("targets", []):
            out.append(DashboardQuery(panel["title"], t["refId"], t["expr"]))
    return out


def variable_queries() -> dict[str, str]:
    """Template variable name -> its query, for the query variables."""
    out = {}
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out[v["name"]] = q["query"] if isinstance(q, dict) else q
    return out


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's $variables (longest names first) with concrete values."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def with_short_for(path: Path, out: Path, duration: str = "1s") -> Path:
    """A copy of the alert rules in `path` whose every `for` is `duration`: the same
    expressions, so that a test sees its alerts fire instead of stay pending."""
    data = yaml.safe_load(path.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


# -- a real Prometheus server --------------------------------------------------------


class PrometheusServer:
    """`prometheus` as a child process on 127.0.0.1, its data and log in `workdir`."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        targets: list[str],
        interval: str = "1s",
        rule_files: list[Path] | None = None,
    ):
        """`rule_files` replaces prometheus.yml's rule files when given."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
        config["rule_files"] = (
            [str(f) for f in rule_files]
            if rule_files is not None
            else [str(MONITORING / f) for f in config["rule_files"]]
        )
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "servekit"]
        job["scrape_interval"] = interval
        job["scrape_timeout"] = interval
        job["static_configs"] = [{"targets": targets}]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"prometheus-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20) -> PrometheusServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()}")

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result as a list of vector samples."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, selector: str | None, label: str) -> list[str]:
        params = {"match[]": selector} if selector else {}
        r = httpx.get(f"{self.url}/api/v1/label/{label}/values", params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", body
        values: list[str] = body["data"]
        return values

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(s["value"][1]) for s in result]


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(v) for v in values(result))
