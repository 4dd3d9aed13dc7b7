"""Every metric the prometheus-adapter rules, HPAs and KEDA read is one the API or the worker exports.

The exported names come from running services' /metrics endpoints (``fetch_metrics``) or, with no service
running, from PR2's metrics module rendered the way those endpoints render it (``code_metrics``).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml

from PR1_horizontal_pod_autoscaling.manifest_checks.documents import Doc, SafeLoader

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}

#: Series a metric family of each type stores in Prometheus, as suffixes of the family name.
SERIES_SUFFIXES = {
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


def exposed_series_names(exposition: str) -> set[str]:
    """Series names Prometheus stores when it scrapes ``exposition`` (text format 0.0.4).

    Labelled metrics that have not been observed yet print only HELP/TYPE lines, so the names come from
    the metric families and their types as well as from the samples.
    """
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def fetch_metrics(urls: Sequence[str], timeout_s: float = 5.0) -> set[str]:
    """Series names the services at ``urls`` (their /metrics endpoints) expose."""
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


def strip_promql(query: str) -> str:
    """``query`` without adapter templates, strings, label matchers, ranges and grouping clauses."""
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
    stripped = strip_promql(query)
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        word = match.group(0)
        rest = stripped[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (stripped[match.start() - 1].isdigit() or stripped[match.start() - 1] == "."):
            continue  # 5m, 1e3, 0.5
        names.add(word)
    return names


def is_exported(name: str, exported: set[str]) -> bool:
    """Whether ``name`` (or, with a ``~`` prefix, the regular expression after it) matches an exported name."""
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


def check_adapter_rule(section: str, rule: dict[str, Any], exported: set[str]) -> tuple[list[str], set[str]]:
    """Problems of one adapter rule, and the metric names it serves."""
    problems = []
    where = f"prometheus-adapter {section} seriesQuery {rule.get('seriesQuery')!r}"
    series = promql_metric_names(rule.get("seriesQuery", ""))
    if not series:
        problems.append(f"{where}: names no metric")
    for name in sorted(series):
        if not is_exported(name, exported):
            problems.append(f"{where}: metric {name!r} is not exported by the API or the worker")
    query = rule.get("metricsQuery", "")
    if "<<.Series>>" not in query:
        for name in sorted(promql_metric_names(query)):
            if not is_exported(name, exported):
                problems.append(f"{where}: metricsQuery reads {name!r}, which is not exported")
    names = adapter_metric_names(rule, exported)
    if series and not names:
        problems.append(f"{where}: name.matches {(rule.get('name') or {}).get('matches')!r} "
                        "matches none of its series")
    overrides = (rule.get("resources") or {}).get("overrides") or {}
    resources = {v.get("resource") for v in overrides.values() if isinstance(v, dict)}
    if section == "rules" and not {"namespace", "pod"} <= resources:
        problems.append(f"{where}: a per-pod rule needs resources.overrides for namespace and pod")
    return problems, names


def check_hpa_metrics(doc: Doc, exported: set[str], served: dict[str, set[str]]) -> list[str]:
    """An HPA's Pods/Object/External metrics are served by an adapter rule of the right section."""
    problems = []
    for metric in doc.spec.get("metrics") or []:
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
    return problems


def check_keda_queries(doc: Doc, exported: set[str]) -> list[str]:
    """A ScaledObject's Prometheus triggers query exported metrics."""
    problems = []
    for trig in doc.spec.get("triggers") or []:
        if trig.get("type") != "prometheus":
            continue
        query = (trig.get("metadata") or {}).get("query", "")
        names = promql_metric_names(query)
        if not names:
            problems.append(f"{doc.label()}: prometheus trigger query {query!r} names no metric")
        for name in sorted(names):
            if not is_exported(name, exported):
                problems.append(f"{doc.label()}: prometheus trigger reads {name!r}, which is not "
                                "exported by the API or the worker")
    return problems


def check_metrics(docs: Sequence[Doc], exported: set[str]) -> list[str]:
    """Adapter series, HPA custom/external metrics and KEDA Prometheus queries use exported names."""
    problems = []
    served: dict[str, set[str]] = {"rules": set(), "externalRules": set()}
    for section, rule in adapter_rules(docs):
        rule_problems, names = check_adapter_rule(section, rule, exported)
        problems += rule_problems
        served.setdefault(section, set()).update(names)
    for doc in docs:
        if doc.kind == "HorizontalPodAutoscaler":
            problems += check_hpa_metrics(doc, exported, served)
        if doc.kind == "ScaledObject":
            problems += check_keda_queries(doc, exported)
    return problems
