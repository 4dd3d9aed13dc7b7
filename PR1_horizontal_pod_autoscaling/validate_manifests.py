"""Offline checks of the PR1 manifests against Kubernetes' schemas and against PR2's code.

    python PR1_horizontal_pod_autoscaling/validate_manifests.py            # report, exit 1 on problems
    python PR1_horizontal_pod_autoscaling/validate_manifests.py --json     # the same as JSON
    python PR1_horizontal_pod_autoscaling/validate_manifests.py --metrics-url http://127.0.0.1:8000/metrics \
        --metrics-url http://127.0.0.1:9100/metrics                        # metric names from running services

No cluster is needed (or reachable here), so every check a `kubectl apply` would make on a server is made
here from the same sources of truth:

- every manifest validates in strict mode against the official schemas bundled in ``kubernetes-validate``
  for several Kubernetes versions; a kind without a schema is a failure (the library only warns), except the
  two CRDs used here (KEDA ScaledObject, Prometheus Operator ServiceMonitor), which are checked against the
  JSON schemas in ``schemas/`` (only the fields these manifests use, no unknown field allowed);
- ``yamllint`` (``.yamllint.yaml``) and ``kubectl kustomize`` render;
- the manifests agree with each other and with PR2's code: selectors and labels, Service target ports,
  probe ports, every autoscaler's target, one autoscaler per Deployment, the image of the compose file,
  the settings module (topics, group, partitions, ports, the ConfigMap's INFERENCE_* keys), the model
  registry format, and every metric the adapter rules, HPAs and KEDA read is one the services export.

The cluster states checked are the ones the README's commands produce (each a list of files applied in
order; a later object with the same kind/namespace/name replaces the earlier one, like ``kubectl apply``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import (
    InvalidSchemaError,
    SchemaNotFoundError,
    VersionNotSupportedError,
)

from modelops.errors import UsageError

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SCHEMA_DIR = HERE / "schemas"
YAMLLINT_CONFIG = ".yamllint.yaml"
DEFAULT_COMPOSE = REPO_ROOT / "PR2_async_inference" / "docker-compose.yaml"
#: Oldest and newest minor versions checked by default (kubernetes-validate ships 1.25-1.37).
DEFAULT_KUBE_VERSIONS = ("1.30", "1.33")

#: Cluster states the README's commands produce: files applied in this order.
APPLY_SETS: dict[str, tuple[str, ...]] = {
    "the three commands": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml"),
    "loading models": ("model-pvc.yaml", "model-loader.yaml"),
    "adapter by hand": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml", "servicemonitor.yaml",
                        "prometheus-adapter-config.yaml", "custom-metrics-hpa.yaml"),
    "KEDA": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml", "servicemonitor.yaml",
             "keda-scaledobject.yaml"),
    "dev Kafka": ("kafka-dev.yaml",),
}
KUSTOMIZE_SET = "kubectl kustomize"

#: CRDs without an upstream schema in kubernetes-validate: (apiVersion, kind) -> our schema file.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}


@dataclass
class Doc:
    """One YAML document and where it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.body.get("metadata") or {}).get("namespace", ""))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def label(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


@dataclass
class Report:
    """Problems (each makes the run fail) and notes (what was checked or skipped, and why)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problems: Iterable[str], prefix: str = "") -> None:
        for problem in problems:
            text = f"[{prefix}] {problem}" if prefix else problem
            if problem not in {p.split("] ", 1)[-1] for p in self.problems}:
                self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "notes": self.notes}


# --------------------------------------------------------------------------------------------- loading


def manifest_files(root: Path) -> list[Path]:
    """Every manifest in ``root`` (kustomization.yaml and the yamllint config are not manifests)."""
    return sorted(p for p in root.glob("*.yaml") if p.name not in ("kustomization.yaml", YAMLLINT_CONFIG))


#: libyaml's loader when PyYAML was built with it (several times faster), else the pure-Python one.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_docs(path: Path) -> list[Doc]:
    return load_text_docs(path.read_text(), path.name)


def load_text_docs(text: str, source: str) -> list[Doc]:
    return [Doc(source, d) for d in yaml.load_all(text, Loader=SafeLoader) if d]


def apply_in_order(docs: Iterable[Doc]) -> list[Doc]:
    """The objects left after applying ``docs`` in order (same kind/namespace/name: the last one wins)."""
    state: dict[tuple[str, str, str], Doc] = {}
    for doc in docs:
        state.pop(doc.key, None)
        state[doc.key] = doc
    return list(state.values())


# --------------------------------------------------------------------------------------------- schemas


def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    name = CRD_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    schema = json.loads((SCHEMA_DIR / name).read_text())
    return jsonschema.Draft202012Validator(schema)


def check_schema(doc: Doc, versions: Sequence[str]) -> list[str]:
    """Strict schema validation; a kind with no schema anywhere is a problem, never a warning."""
    body = doc.body
    if not isinstance(body, dict) or "apiVersion" not in body or "kind" not in body:
        return [f"{doc.source}: a document without apiVersion/kind"]
    crd = _crd_validator(body["apiVersion"], body["kind"])
    if crd is not None:
        return [f"{doc.label()}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message} (schemas/)"
                for e in crd.iter_errors(body)]
    text = json.dumps(body, sort_keys=True)
    return [f"{doc.label()}: {error}" for version in versions if (error := _k8s_schema_error(text, version))]


@functools.lru_cache(maxsize=4096)
def _k8s_schema_error(doc_json: str, version: str) -> str | None:
    """kubernetes-validate in strict mode; cached by content because it re-reads its schemas on every call."""
    try:
        kubernetes_validate.validate(json.loads(doc_json), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        return f"does not validate against Kubernetes {exc.version} (strict): {path}: {exc.message}"
    except SchemaNotFoundError as exc:
        return f"unknown kind: {exc.message}"
    except (InvalidSchemaError, VersionNotSupportedError) as exc:
        return f"cannot validate: {getattr(exc, 'message', exc)}"
    return None


def check_yamllint(paths: Sequence[Path], config: Path) -> list[str]:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(config))
    problems = []
    for path in paths:
        for p in linter.run(path.read_text(), conf, str(path)):
            # --strict: warnings fail too.
            problems.append(f"{path.name}:{p.line}:{p.column}: yamllint {p.level}: {p.desc} ({p.rule})")
    return problems


def render_kustomization(root: Path, kubectl: str) -> tuple[list[Doc], list[str]]:
    proc = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return [], [f"kubectl kustomize {root.name} failed: {proc.stderr.strip()[:500]}"]
    return load_text_docs(proc.stdout, "kustomize"), []


# --------------------------------------------------------------------------------------------- metrics


def exposed_series_names(exposition: str) -> set[str]:
    """Series names Prometheus stores when it scrapes ``exposition`` (text format 0.0.4).

    Labelled metrics that have not been observed yet print only HELP/TYPE lines, so the names come from
    the metric families and their types as well as from the samples.
    """
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "gauge": ("",),
        "untyped": ("",),
        "unknown": ("",),
        "info": ("_info",),
        "stateset": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        base = family.name
        names.update(base + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def fetch_metrics(urls: Sequence[str], timeout_s: float = 5.0) -> set[str]:
    names: set[str] = set()
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            names |= exposed_series_names(resp.read().decode())
    return names


def code_metrics() -> set[str]:
    """Names PR2's metrics module registers, rendered like its /metrics endpoints do.

    Used when no running service is given; the tests read the live endpoints instead.
    """
    import prometheus_client

    from PR2_async_inference import metrics  # noqa: F401  (registers the metrics)

    return exposed_series_names(prometheus_client.generate_latest(prometheus_client.REGISTRY).decode())


def _strip_promql(query: str) -> str:
    query = re.sub(r"<<[^>]*>>", " ", query)  # prometheus-adapter templates
    query = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', query)  # strings
    query = re.sub(r"\{[^}]*\}", " ", query)  # label matchers
    query = re.sub(r"\[[^\]]*\]", " ", query)  # range selectors
    query = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", query)
    return query


def promql_metric_names(query: str) -> set[str]:
    """Metric names a PromQL query (or a prometheus-adapter seriesQuery) reads.

    Identifiers not followed by ``(`` are metric names, except PromQL keywords; ``{__name__="x"}``
    matchers count too (regex matchers are returned with a ``~`` prefix for the caller to match).
    """
    names = set()
    for op, value in re.findall(r'__name__\s*(=~|=)\s*"([^"]*)"', query):
        names.add(value if op == "=" else "~" + value)
    stripped = _strip_promql(query)
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        word = match.group(0)
        rest = stripped[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (stripped[match.start() - 1].isdigit() or stripped[match.start() - 1] == "."):
            continue  # 5m, 1e3, 0.5
        names.add(word)
    return names


def _known(name: str, exported: set[str]) -> bool:
    if name.startswith("~"):
        return any(re.fullmatch(name[1:], e) for e in exported)
    return name in exported


def adapter_rules(docs: Sequence[Doc]) -> list[tuple[str, dict[str, Any]]]:
    """(section, rule) for every prometheus-adapter rule in ConfigMaps that carry a config.yaml."""
    rules = []
    for doc in docs:
        if doc.kind != "ConfigMap" or "config.yaml" not in (doc.body.get("data") or {}):
            continue
        config = yaml.load(doc.body["data"]["config.yaml"], Loader=SafeLoader) or {}
        for section in ("rules", "externalRules", "resourceRules"):
            for rule in config.get(section) or []:
                rules.append((section, rule))
    return rules


def adapter_metric_names(rule: dict[str, Any], exported: set[str]) -> set[str]:
    """The metric names the adapter serves for ``rule`` (``name.matches``/``name.as`` applied)."""
    series = {n for n in promql_metric_names(rule.get("seriesQuery", "")) if not n.startswith("~")}
    series |= {n for n in exported for r in promql_metric_names(rule.get("seriesQuery", ""))
               if r.startswith("~") and re.fullmatch(r[1:], n)}
    naming = rule.get("name") or {}
    pattern = naming.get("matches", "^(.*)$")
    as_ = naming.get("as", "${1}" if "(" in pattern else "$0")
    served = set()
    for name in series:
        m = re.search(pattern, name)
        if not m:
            continue
        out = as_.replace("$0", m.group(0)).replace("${0}", m.group(0))
        for i, g in enumerate(m.groups(), start=1):
            out = out.replace(f"${{{i}}}", g or "").replace(f"${i}", g or "")
        served.add(out)
    return served


def check_metrics(docs: Sequence[Doc], exported: set[str]) -> list[str]:
    """Adapter series, HPA custom/external metrics and KEDA Prometheus queries use exported names."""
    problems = []
    served: dict[str, set[str]] = {"rules": set(), "externalRules": set()}
    for section, rule in adapter_rules(docs):
        where = f"prometheus-adapter {section} seriesQuery {rule.get('seriesQuery')!r}"
        series = promql_metric_names(rule.get("seriesQuery", ""))
        if not series:
            problems.append(f"{where}: names no metric")
        for name in sorted(series):
            if not _known(name, exported):
                problems.append(f"{where}: metric {name!r} is not exported by the API or the worker")
        query = rule.get("metricsQuery", "")
        if "<<.Series>>" not in query:
            for name in sorted(promql_metric_names(query)):
                if not _known(name, exported):
                    problems.append(f"{where}: metricsQuery reads {name!r}, which is not exported")
        names = adapter_metric_names(rule, exported)
        if series and not names:
            problems.append(f"{where}: name.matches {(rule.get('name') or {}).get('matches')!r} "
                            "matches none of its series")
        overrides = (rule.get("resources") or {}).get("overrides") or {}
        resources = {v.get("resource") for v in overrides.values() if isinstance(v, dict)}
        if section == "rules" and not {"namespace", "pod"} <= resources:
            problems.append(f"{where}: a per-pod rule needs resources.overrides for namespace and pod")
        served.setdefault(section, set()).update(names)

    for doc in docs:
        if doc.kind == "HorizontalPodAutoscaler":
            for metric in (doc.body.get("spec") or {}).get("metrics") or []:
                mtype = metric.get("type")
                if mtype not in ("Pods", "Object", "External"):
                    continue
                name = ((metric.get(mtype.lower()) or {}).get("metric") or {}).get("name", "")
                section = "externalRules" if mtype == "External" else "rules"
                if name not in exported and name not in served[section]:
                    problems.append(f"{doc.label()}: {mtype} metric {name!r} is neither exported by the "
                                    "services nor served by a prometheus-adapter rule")
                elif name not in served[section]:
                    problems.append(f"{doc.label()}: {mtype} metric {name!r} has no prometheus-adapter "
                                    f"{section} entry, so the HPA cannot read it")
        if doc.kind == "ScaledObject":
            for trig in (doc.body.get("spec") or {}).get("triggers") or []:
                if trig.get("type") != "prometheus":
                    continue
                query = (trig.get("metadata") or {}).get("query", "")
                names = promql_metric_names(query)
                if not names:
                    problems.append(f"{doc.label()}: prometheus trigger query {query!r} names no metric")
                for name in sorted(names):
                    if not _known(name, exported):
                        problems.append(f"{doc.label()}: prometheus trigger reads {name!r}, which is not "
                                        "exported by the API or the worker")
    return problems


# --------------------------------------------------------------------------------------------- workloads


def pod_specs(docs: Sequence[Doc], kinds: tuple[str, ...] = ("Deployment", "Job")) -> list[tuple[Doc, dict[str, Any],
                                                                                        dict[str, str]]]:
    """(doc, pod spec, pod labels) for workloads of ``kinds`` and bare Pods."""
    out = []
    for doc in docs:
        if doc.kind in kinds:
            template = (doc.body.get("spec") or {}).get("template") or {}
            out.append((doc, template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}))
        elif doc.kind == "Pod":
            out.append((doc, doc.body.get("spec") or {}, (doc.body.get("metadata") or {}).get("labels") or {}))
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return False
    match_labels = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _port_of(container: dict[str, Any], port: Any) -> dict[str, Any] | None:
    for p in container.get("ports") or []:
        if port == p.get("name") or (isinstance(port, int) and port == p.get("containerPort")):
            return p
    return None


def check_workloads(docs: Sequence[Doc]) -> list[str]:
    problems = []
    deployments = [d for d in docs if d.kind == "Deployment"]
    claims = {d.name for d in docs if d.kind == "PersistentVolumeClaim"}
    configmaps = {d.name: d for d in docs if d.kind == "ConfigMap"}

    for doc in deployments:
        spec = doc.body.get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        selector = spec.get("selector") or {}
        if not _selects(selector, labels):
            problems.append(f"{doc.label()}: spec.selector {selector} does not match the pod template labels "
                            f"{labels}")

    for doc, pod, _labels in pod_specs(docs):
        where = doc.label()
        psc = pod.get("securityContext") or {}
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for vol in volumes.values():
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{where}: volume {vol['name']!r} uses PVC {claim!r}, which no manifest defines")
            cm = (vol.get("configMap") or {}).get("name")
            if cm and cm not in configmaps:
                problems.append(f"{where}: volume {vol['name']!r} uses ConfigMap {cm!r}, which no manifest "
                                "defines")
        if doc.kind == "Deployment" and not isinstance(pod.get("terminationGracePeriodSeconds"), int):
            problems.append(f"{where}: no terminationGracePeriodSeconds (the default 30 s is not a decision)")
        for c in pod.get("containers") or []:
            cwhere = f"{where} container {c.get('name')!r}"
            csc = c.get("securityContext") or {}
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                problems.append(f"{cwhere}: runAsNonRoot is not true")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cwhere}: capabilities.drop does not contain ALL")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{cwhere}: seccompProfile is {seccomp!r}, not RuntimeDefault")
            mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
            tmp = mounts.get("/tmp")
            if tmp is None or "emptyDir" not in (volumes.get(tmp.get("name")) or {}):
                problems.append(f"{cwhere}: read-only root filesystem but no emptyDir mounted at /tmp")
            for m in mounts.values():
                vol = volumes.get(m.get("name"))
                if vol is None:
                    problems.append(f"{cwhere}: volumeMount {m.get('name')!r} names no volume")
            res = c.get("resources") or {}
            for kind in ("cpu", "memory"):
                if kind not in (res.get("requests") or {}):
                    problems.append(f"{cwhere}: no resources.requests.{kind} (HPA utilization is measured "
                                    "against requests)")
            if "memory" not in (res.get("limits") or {}):
                problems.append(f"{cwhere}: no resources.limits.memory")
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_name)
                if probe is None:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
                if "port" in action and _port_of(c, action["port"]) is None:
                    problems.append(f"{cwhere}: {probe_name} port {action['port']!r} is not a container port")
            if doc.kind == "Deployment":
                for probe_name in ("livenessProbe", "readinessProbe"):
                    if probe_name not in c:
                        problems.append(f"{cwhere}: no {probe_name}")

    # Security and resource rules above are for the service's own pods; the dev Kafka StatefulSet
    # (third-party image) is only checked for wiring: its Service must reach its ports.
    workloads = pod_specs([d for d in docs if d.kind != "Pod"], kinds=("Deployment", "StatefulSet"))
    for svc in (d for d in docs if d.kind == "Service"):
        selector = (svc.body.get("spec") or {}).get("selector") or {}
        targets = [(doc, pod) for doc, pod, labels in workloads if _selects(selector, labels)]
        if not targets:
            problems.append(f"{svc.label()}: selector {selector} matches no Deployment's pod labels")
            continue
        for port in (svc.body.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for doc, pod in targets:
                if not any(_port_of(c, target) for c in pod.get("containers") or []):
                    problems.append(f"{svc.label()}: targetPort {target!r} is not a container port of "
                                    f"{doc.kind}/{doc.name}")

    for pdb in (d for d in docs if d.kind == "PodDisruptionBudget"):
        selector = (pdb.body.get("spec") or {}).get("selector") or {}
        if not any(_selects(selector, labels) for _, _, labels in workloads):
            problems.append(f"{pdb.label()}: selector {selector} matches no Deployment's pod labels")

    services = [d for d in docs if d.kind == "Service"]
    for sm in (d for d in docs if d.kind == "ServiceMonitor"):
        spec = sm.body.get("spec") or {}
        selected = [s for s in services if _selects(spec.get("selector") or {}, (s.body.get("metadata") or {})
                                                     .get("labels") or {})]
        if not selected:
            problems.append(f"{sm.label()}: selector matches no Service")
        port_names = {p.get("name") for s in selected for p in (s.body.get("spec") or {}).get("ports") or []}
        for ep in spec.get("endpoints") or []:
            if ep.get("port") and ep["port"] not in port_names:
                problems.append(f"{sm.label()}: endpoint port {ep['port']!r} is no port of the selected Services")
    return problems


# --------------------------------------------------------------------------------------------- autoscaling


def is_worker(doc: Doc) -> bool:
    """The Deployment that runs PR2's model worker (a Kafka consumer of the requests topic)."""
    pod = ((doc.body.get("spec") or {}).get("template") or {}).get("spec") or {}
    return any("model_worker" in " ".join(map(str, (c.get("command") or []) + (c.get("args") or [])))
               for c in pod.get("containers") or [])


def check_autoscalers(docs: Sequence[Doc], settings: Any, max_batch: int) -> list[str]:
    problems = []
    deployments = {d.name: d for d in docs if d.kind == "Deployment"}
    owners: dict[str, list[str]] = {}
    partitions = settings.requests_partitions

    def target_of(doc: Doc, ref: Any) -> Doc | None:
        if not isinstance(ref, dict) or not ref.get("name"):
            problems.append(f"{doc.label()}: no scaleTargetRef")
            return None
        if ref.get("kind", "Deployment") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
            problems.append(f"{doc.label()}: scaleTargetRef {ref} is not an apps/v1 Deployment")
            return None
        target = deployments.get(ref["name"])
        if target is None:
            problems.append(f"{doc.label()}: scaleTargetRef names Deployment {ref['name']!r}, which does not "
                            f"exist (have: {', '.join(sorted(deployments)) or 'none'})")
        return target

    for doc in docs:
        if doc.kind == "HorizontalPodAutoscaler":
            spec = doc.body.get("spec") or {}
            if doc.body.get("apiVersion") != "autoscaling/v2":
                problems.append(f"{doc.label()}: apiVersion {doc.body.get('apiVersion')!r}; use autoscaling/v2")
            target = target_of(doc, spec.get("scaleTargetRef"))
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
            if not isinstance(hi, int) or hi < lo:
                problems.append(f"{doc.label()}: maxReplicas {hi} < minReplicas {lo}")
            behavior = spec.get("behavior") or {}
            if not ("scaleUp" in behavior and "scaleDown" in behavior):
                problems.append(f"{doc.label()}: behavior needs scaleUp and scaleDown")
            if not spec.get("metrics"):
                problems.append(f"{doc.label()}: no metrics")
            if target is not None:
                owners.setdefault(target.name, []).append(doc.label())
                if is_worker(target) and isinstance(hi, int) and hi > partitions:
                    problems.append(f"{doc.label()}: worker maxReplicas {hi} > {partitions} partitions of "
                                    f"{settings.requests_topic}; the extra workers would sit idle")
                if is_worker(target):
                    problems += _check_worker_targets(doc, spec.get("metrics") or [], settings, max_batch, hi)
        elif doc.kind == "ScaledObject":
            spec = doc.body.get("spec") or {}
            target = target_of(doc, spec.get("scaleTargetRef"))
            hi = spec.get("maxReplicaCount", 100)
            if target is None:
                continue
            hpa_name = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("name")
            adopts = (doc.body.get("metadata") or {}).get("annotations", {}).get(
                "scaledobject.keda.sh/transfer-hpa-ownership") == "true"
            if adopts and hpa_name:  # KEDA takes over that HPA: it is one autoscaler, not two
                owners[target.name] = [o for o in owners.get(target.name, [])
                                       if not o.endswith(f"HorizontalPodAutoscaler/{hpa_name}")]
            owners.setdefault(target.name, []).append(doc.label())
            if is_worker(target):
                if hi > partitions:
                    problems.append(f"{doc.label()}: worker maxReplicaCount {hi} > {partitions} partitions of "
                                    f"{settings.requests_topic}")
                problems += _check_keda_triggers(doc, spec, settings, max_batch)
    for name, who in owners.items():
        if len(who) > 1:
            problems.append(f"Deployment/{name} has {len(who)} autoscalers that would fight: {', '.join(who)}")
    return problems


def _quantity(value: Any) -> float:
    text = str(value)
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if text and text[-1] in scale:
        return float(text[:-1]) * scale[text[-1]]
    return float(text)


def _check_worker_targets(doc: Doc, metrics: list[dict[str, Any]], settings: Any, max_batch: int,
                          max_replicas: int) -> list[str]:
    """The queue targets must make sense for PR2's batching and backpressure settings."""
    problems = []
    for metric in metrics:
        mtype = metric.get("type")
        body = metric.get((mtype or "").lower()) or {}
        name = (body.get("metric") or {}).get("name", "")
        target = body.get("target") or {}
        value = target.get("averageValue", target.get("value"))
        if value is None:
            continue
        value = _quantity(value)
        if name == "inference_consumer_lag" or name.endswith("consumer_lag"):
            if value < max_batch:
                problems.append(f"{doc.label()}: lag target {value:g} per worker is below one batch "
                                f"({max_batch}); a batching worker would always look behind")
            bound = settings.backpressure_max_lag
            if bound and value * max_replicas >= bound:
                problems.append(f"{doc.label()}: lag target {value:g} x {max_replicas} workers >= backpressure "
                                f"bound {bound}: the API would answer 429 before the workers scale out")
        if "age" in name:
            for bound_name in ("backpressure_max_age_s", "default_ttl_s"):
                bound = getattr(settings, bound_name)
                if bound and value >= bound:
                    problems.append(f"{doc.label()}: oldest-age target {value:g} s >= {bound_name} {bound:g} s")
    return problems


def _check_keda_triggers(doc: Doc, spec: dict[str, Any], settings: Any, max_batch: int) -> list[str]:
    problems = []
    kafka = [t for t in spec.get("triggers") or [] if t.get("type") in ("kafka", "apache-kafka")]
    if not kafka:
        problems.append(f"{doc.label()}: no kafka trigger for the worker")
    for trig in kafka:
        meta = trig.get("metadata") or {}
        expected = {
            "bootstrapServers": settings.kafka_bootstrap_servers,
            "consumerGroup": settings.worker_group,
            "topic": settings.requests_topic,
        }
        for key, want in expected.items():
            if meta.get(key) != want:
                problems.append(f"{doc.label()}: kafka trigger {key} {meta.get(key)!r} != {want!r} "
                                "(the worker's settings)")
        lag = meta.get("lagThreshold")
        if lag is None or _quantity(lag) < max_batch:
            problems.append(f"{doc.label()}: lagThreshold {lag!r} is below one batch ({max_batch})")
        if "activationLagThreshold" not in meta:
            problems.append(f"{doc.label()}: no activationLagThreshold")
        if meta.get("offsetResetPolicy") != "earliest":
            problems.append(f"{doc.label()}: offsetResetPolicy must be 'earliest' like the worker's consumer")
    return problems


# --------------------------------------------------------------------------------------------- code


def configmap_settings(docs: Sequence[Doc], settings_module: Any) -> tuple[Any, list[str]]:
    """PR2's Settings as the pods see them: defaults overridden by the INFERENCE_* ConfigMap keys."""
    problems = []
    values: dict[str, str] = {}
    fields = settings_module.Settings.model_fields
    prefix = settings_module.Settings.model_config.get("env_prefix", "INFERENCE_")
    for doc in docs:
        if doc.kind != "ConfigMap":
            continue
        for key, value in (doc.body.get("data") or {}).items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):].lower()
            if name not in fields:
                problems.append(f"{doc.label()}: {key} is no setting of PR2_async_inference/settings.py "
                                "(the service would silently ignore it)")
            else:
                values[name] = value
    try:
        effective = settings_module.Settings(**values)
    except Exception as exc:  # pydantic.ValidationError: a value of the wrong type
        problems.append(f"ConfigMap INFERENCE_* values are invalid for PR2's Settings: {exc}")
        effective = settings_module.Settings()
    # One naming of topics and group for compose and Kubernetes (DESIGN.md: one place for each fact).
    for name in ("requests_topic", "requests_partitions", "results_topic", "results_partitions", "dlq_topic",
                 "dlq_partitions", "worker_group", "api_port", "worker_metrics_port"):
        if getattr(effective, name) != fields[name].default:
            problems.append(f"ConfigMap sets {prefix}{name.upper()}={getattr(effective, name)!r} but PR2's "
                            f"settings say {fields[name].default!r}")
    return effective, problems


def check_code_consistency(docs: Sequence[Doc], settings: Any, settings_module: Any,
                           compose_image: str | None) -> tuple[list[str], int]:
    """Ports, image, registry; returns (problems, the largest max_batch_size of the registry)."""
    problems = []
    max_batch = settings.max_batch_size
    image = getattr(settings_module, "IMAGE_NAME", None)
    registry_docs = {d.name: d for d in docs if d.kind == "ConfigMap"}
    for doc, pod, _ in pod_specs(docs):
        for c in pod.get("containers") or []:
            if image and c.get("image") != image:
                problems.append(f"{doc.label()}: image {c.get('image')!r} != PR2's IMAGE_NAME {image!r}")
            if compose_image and c.get("image") != compose_image:
                problems.append(f"{doc.label()}: image {c.get('image')!r} != docker-compose.yaml's "
                                f"{compose_image!r}")
        if doc.kind != "Deployment":
            continue
        worker = is_worker(doc)
        want = settings.worker_metrics_port if worker else settings.api_port
        ports = [p.get("containerPort") for c in pod.get("containers") or [] for p in c.get("ports") or []]
        if want not in ports:
            problems.append(f"{doc.label()}: container ports {ports} miss the "
                            f"{'worker metrics' if worker else 'API'} port {want} from PR2's settings")
        command = " ".join(str(x) for c in pod.get("containers") or [] for x in
                           (c.get("command") or []) + (c.get("args") or []))
        m = re.search(r"--(?:metrics-)?port[ =](\d+)", command)
        if m and int(m.group(1)) != want:
            problems.append(f"{doc.label()}: command listens on {m.group(1)}, container port is {want}")
        if doc.kind == "Deployment" and is_worker(doc):
            rolling = ((doc.body.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
            if str(rolling.get("maxSurge", "25%")) not in ("0", "0%"):
                problems.append(f"{doc.label()}: rollingUpdate.maxSurge {rolling.get('maxSurge', '25%')!r} must be 0: "
                                "at max replicas a surge pod is a consumer without a partition and never ready")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            floor = max(30.0, settings.session_timeout_ms / 1000)
            if grace < floor:
                problems.append(f"{doc.label()}: terminationGracePeriodSeconds {grace} < {floor:g} s: the worker "
                                "may be killed before it finishes its batch, commits and leaves the group")
        # The registry file the pods read must be mounted from a ConfigMap and parse with PR2's loader.
        registry_path = Path(str(settings.model_registry))
        for c in pod.get("containers") or []:
            mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            mount = mounts.get(str(registry_path.parent))
            cm_name = ((volumes.get(mount.get("name")) or {}).get("configMap") or {}).get("name") if mount else None
            cm = registry_docs.get(cm_name or "")
            if cm is None or registry_path.name not in (cm.body.get("data") or {}):
                problems.append(f"{doc.label()}: INFERENCE_MODEL_REGISTRY={registry_path} is not mounted from a "
                                "ConfigMap key")
                continue
            model_mounts = [m for m in mounts.values()
                            if "persistentVolumeClaim" in (volumes.get(m.get("name")) or {})]
            reg_problems, batch = _check_registry(cm, registry_path.name, model_mounts)
            problems += [f"{doc.label()}: {p}" for p in reg_problems]
            max_batch = max(max_batch, batch)
    return problems, max_batch


def _check_registry(cm: Doc, key: str, model_mounts: list[dict[str, Any]]) -> tuple[list[str], int]:
    from PR2_async_inference.registry import load_registry

    problems = []
    if not model_mounts:
        return ["no model store PVC is mounted"], 0
    for m in model_mounts:
        if m.get("readOnly") is not True:
            problems.append(f"the model store is mounted at {m.get('mountPath')} read-write; mount it readOnly")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / key
        path.write_text(cm.body["data"][key])
        try:
            registry = load_registry(path)
        except Exception as exc:
            return [f"{cm.label()}: {key} is not a valid PR2 model registry: {exc}"], 0
    roots = [str(m.get("mountPath")).rstrip("/") + "/" for m in model_mounts]
    batch = 0
    for spec in registry.models.values():
        for art in [spec.artifact, *spec.fallbacks]:
            if not any(str(art).startswith(r) for r in roots):
                problems.append(f"registry model {spec.name!r}: {art} is outside the model store mount "
                                f"({', '.join(roots)})")
        batch = max(batch, spec.max_batch_size or 0)
    return problems, batch


def compose_image(compose_file: Path) -> tuple[str | None, list[str]]:
    """The image the compose file builds/uses for the API and the worker (one image for both)."""
    if not compose_file.exists():
        return None, []
    data = yaml.safe_load(compose_file.read_text()) or {}
    images = {name: svc.get("image") for name, svc in (data.get("services") or {}).items()
              if isinstance(svc, dict) and ("build" in svc or "inference" in str(svc.get("image", "")))}
    distinct = {i for i in images.values() if i}
    if len(distinct) != 1:
        return None, [f"{compose_file.name}: expected one image for the service containers, found {images}"]
    return distinct.pop(), []


def check_kafka_image(docs: Sequence[Doc], compose_file: Path) -> list[str]:
    """The dev broker runs the same apache/kafka image as PR2's compose file."""
    if not compose_file.exists():
        return []
    data = yaml.safe_load(compose_file.read_text()) or {}
    wanted = {str(svc.get("image")) for svc in (data.get("services") or {}).values()
              if isinstance(svc, dict) and str(svc.get("image", "")).startswith("apache/kafka")}
    problems = []
    for doc in docs:
        pod = ((doc.body.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in pod.get("containers") or []:
            image = str(c.get("image", ""))
            if image.startswith("apache/kafka") and wanted and image not in wanted:
                problems.append(f"{doc.label()}: image {image!r} != docker-compose.yaml's {', '.join(sorted(wanted))}")
    return problems


# --------------------------------------------------------------------------------------------- driver


def check_set(docs: Sequence[Doc], exported: set[str], settings_module: Any, compose: str | None) -> list[str]:
    settings, problems = configmap_settings(docs, settings_module)
    code_problems, max_batch = check_code_consistency(docs, settings, settings_module, compose)
    problems += code_problems
    problems += check_workloads(docs)
    problems += check_autoscalers(docs, settings, max_batch)
    problems += check_metrics(docs, exported)
    return problems


def run_checks(root: Path | str = HERE, *, kube_versions: Sequence[str] = DEFAULT_KUBE_VERSIONS,
               exported_metrics: set[str] | None = None, compose_file: Path | str | None = DEFAULT_COMPOSE,
               kubectl: str | None = None, lint: bool = True) -> Report:
    """Every check on the manifests in ``root``.

    Args:
        root: folder with the manifests, kustomization.yaml and .yamllint.yaml (default: this folder).
        kube_versions: Kubernetes versions to validate against (default: 1.30 and 1.33).
        exported_metrics: series names the services expose (default: rendered from PR2's metrics module).
        compose_file: PR2's docker-compose.yaml for the image name (default: the repo's).
        kubectl: kubectl binary for ``kubectl kustomize`` (default: found on PATH; skipped with a note
            when absent).
        lint: run yamllint (default: True).
    """
    from PR2_async_inference import settings as settings_module

    root = Path(root)
    report = Report()
    files = manifest_files(root)
    by_file: dict[str, list[Doc]] = {}
    for path in files:
        try:
            by_file[path.name] = load_docs(path)
        except yaml.YAMLError as exc:
            report.add([f"{path.name}: not valid YAML: {exc}"])
            by_file[path.name] = []
    for docs in by_file.values():
        for doc in docs:
            report.add(check_schema(doc, kube_versions), "schema")
    report.notes.append(f"schemas: {sum(map(len, by_file.values()))} documents in {len(files)} files, strict, "
                        f"Kubernetes {', '.join(kube_versions)}; CRDs against {SCHEMA_DIR.name}/")
    if lint:
        report.add(check_yamllint([*files, root / "kustomization.yaml"], root / YAMLLINT_CONFIG), "yamllint")

    if exported_metrics is None:
        exported_metrics = code_metrics()
        report.notes.append("metric names: rendered from PR2_async_inference.metrics (no --metrics-url)")
    image, problems = (None, []) if compose_file is None else compose_image(Path(compose_file))
    report.add(problems, "compose")
    if compose_file is not None:
        report.add(check_kafka_image([d for docs in by_file.values() for d in docs], Path(compose_file)), "compose")
    if compose_file is not None and image is None and not problems:
        report.notes.append(f"image: {compose_file} not found, compared with settings.IMAGE_NAME only")

    sets: dict[str, list[Doc]] = {}
    for name, members in APPLY_SETS.items():
        missing = [m for m in members if m not in by_file]
        if missing:
            report.add([f"missing manifest(s): {', '.join(missing)}"], name)
        sets[name] = apply_in_order(d for m in members for d in by_file.get(m, []))
    kubectl = kubectl or shutil.which("kubectl")
    if kubectl:
        rendered, problems = render_kustomization(root, kubectl)
        report.add(problems, KUSTOMIZE_SET)
        if rendered:
            sets[KUSTOMIZE_SET] = rendered
            for doc in rendered:
                report.add(check_schema(doc, kube_versions[-1:]), KUSTOMIZE_SET)
    else:
        report.notes.append("kubectl not found: `kubectl kustomize` not run")
    for name, docs in sets.items():
        report.add(check_set(docs, exported_metrics, settings_module, image), name)
    report.notes.append(f"consistency: {len(sets)} cluster states ({', '.join(sets)})")
    return report


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Validate the PR1 Kubernetes manifests offline.", add_help=add_help)
    parser.add_argument("--root", type=Path, default=HERE, help=f"manifest folder (default: {HERE})")
    parser.add_argument("--kube-version", action="append", dest="kube_versions", default=None,
                        help="Kubernetes version to validate against, repeatable "
                             f"(default: {' '.join(DEFAULT_KUBE_VERSIONS)})")
    parser.add_argument("--metrics-url", action="append", default=None,
                        help="a running service's /metrics URL to read metric names from, repeatable "
                             "(default: render PR2_async_inference.metrics)")
    parser.add_argument("--compose-file", type=Path, default=DEFAULT_COMPOSE,
                        help=f"PR2 compose file for the image name (default: {DEFAULT_COMPOSE})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (default: text)")
    return parser


def check_versions(versions: Sequence[str]) -> list[str]:
    """Normalised ``major.minor`` versions; a version kubernetes-validate does not ship is a usage error."""
    supported = [v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()]
    out = []
    for version in versions:
        short = ".".join(version.lstrip("v").split(".")[:2])
        if short not in supported:
            raise UsageError(f"Unsupported Kubernetes version {version!r}. Choose one of: {', '.join(supported)}")
        out.append(short)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    versions = check_versions(args.kube_versions or DEFAULT_KUBE_VERSIONS)
    if not (args.root / "kustomization.yaml").exists():
        raise UsageError(f"--root {args.root} has no kustomization.yaml")
    exported = fetch_metrics(args.metrics_url) if args.metrics_url else None
    report = run_checks(args.root, kube_versions=versions, exported_metrics=exported,
                        compose_file=args.compose_file)
    return report.as_dict()


def print_report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for note in result["notes"]:
        print(f"note: {note}")
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    print("OK: all checks passed" if result["ok"] else f"FAILED: {len(result['problems'])} problem(s)")


def cli(argv: list[str] | None = None) -> int:
    """Exit codes: 0 all checks pass, 1 problems found (or a --metrics-url unreachable), 2 bad usage."""
    logging.basicConfig(level=logging.WARNING)
    args = get_args_parser().parse_args(argv)
    try:
        result = main(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read metrics: {exc}", file=sys.stderr)
        return 1
    print_report(result, args.json)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(cli())
