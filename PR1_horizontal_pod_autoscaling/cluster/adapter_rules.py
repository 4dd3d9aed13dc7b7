"""prometheus-adapter's rules evaluated for real: Debian's Prometheus scrapes a running API and worker, and each
rule's series query and metrics query (rendered as the adapter renders them) are sent to its HTTP API.

prometheus-adapter itself is not built here (its Go module is not served by the proxy); what it would do with a
rule is two HTTP calls to Prometheus, which this module makes: ``/api/v1/series`` with the rule's ``seriesQuery``
(discovery), then ``/api/v1/query`` with ``metricsQuery`` after substituting ``<<.Series>>``,
``<<.LabelMatchers>>`` and ``<<.GroupBy>>`` for the metric the HPA names.
The scrape targets carry the ``namespace`` and ``pod`` labels that the Prometheus Operator's ServiceMonitor
relabelling gives them in a cluster.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from PR2_async_inference.processes import Proc, free_port, spawn, wait_http

PR1_DIR = Path(__file__).resolve().parents[1]


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise RuntimeError("no 'prometheus' on PATH: install Debian's package (apt-get install prometheus)")
    return path


def start_prometheus(targets: dict[str, dict[str, str]], dir: Path, scrape_interval_s: int = 1) -> Proc:
    """Prometheus on a free 127.0.0.1 port scraping ``targets`` ({host:port: labels}) every ``scrape_interval_s``."""
    dir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"},
        "scrape_configs": [{
            "job_name": labels.get("service", f"target-{number}"),
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [address], "labels": labels}],
        } for number, (address, labels) in enumerate(targets.items())],
    }
    (dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = spawn("prometheus", [
        prometheus_binary(), f"--config.file={dir / 'prometheus.yml'}", f"--storage.tsdb.path={dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], dir, port=port, url=f"http://127.0.0.1:{port}")
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout_s=60, proc=proc.popen)
    return proc


@dataclass(frozen=True)
class Rule:
    kind: str  # "rules" (custom.metrics.k8s.io) or "externalRules" (external.metrics.k8s.io)
    series_query: str
    metrics_query: str
    name_as: str
    resources: dict[str, Any]


def adapter_rules(path: Path = PR1_DIR / "prometheus-adapter-config.yaml") -> list[Rule]:
    (configmap,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    return [Rule(kind, rule["seriesQuery"], rule["metricsQuery"], rule["name"]["as"], rule.get("resources", {}))
            for kind in ("rules", "externalRules") for rule in config.get(kind, [])]


def render(rule: Rule, series: str, namespace: str, pods: list[str] | None) -> str:
    """The metrics query as the adapter sends it: per pod (GroupBy pod) for a custom metric of pods, over the
    namespace for an external metric."""
    matchers = [f'namespace="{namespace}"']
    group_by = "namespace"
    if pods is not None:
        matchers.append(f'pod=~"{"|".join(pods)}"')
        group_by = "pod"
    return (rule.metrics_query.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", ",".join(matchers))
            .replace("<<.GroupBy>>", group_by))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {body}")
    return body["data"]


def series(prometheus_url: str, match: str) -> list[dict[str, str]]:
    return _get(f"{prometheus_url}/api/v1/series?" + urllib.parse.urlencode({"match[]": match}))


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    return _get(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))["result"]


def evaluate(prometheus_url: str, namespace: str, pods: list[str]) -> list[dict[str, Any]]:
    """Each rule's discovered series names and its metrics query's result (labels and value), as the HPA's
    metric would get them."""
    results = []
    for rule in adapter_rules():
        found = series(prometheus_url, rule.series_query)
        names = sorted({s["__name__"] for s in found})
        per_pod = "pod" in rule.resources.get("overrides", {})
        rendered = [render(rule, name, namespace, pods if per_pod else None) for name in names]
        values = [{"labels": r["metric"], "value": float(r["value"][1])}
                  for promql in rendered for r in query(prometheus_url, promql)]
        results.append({"kind": rule.kind, "metric": rule.name_as, "series": names, "queries": rendered,
                        "values": values})
    return results


def wait_for_series(prometheus_url: str, match: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if series(prometheus_url, match):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus has no series {match} after {timeout_s:.0f} s")
