"""Workloads and their wiring: selectors match labels, Services, probes and ServiceMonitors reach real ports,
volumes name objects that exist, and the service's own pods run locked down with explicit resources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PR1_horizontal_pod_autoscaling.manifest_checks.documents import Doc, pod_specs, port_of, selects

PodSpecs = list[tuple[Doc, dict[str, Any], dict[str, str]]]


def check_selectors(docs: Sequence[Doc]) -> list[str]:
    """Each Deployment's selector picks its own pod template."""
    problems = []
    for doc in (d for d in docs if d.kind == "Deployment"):
        labels = ((doc.spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        selector = doc.spec.get("selector") or {}
        if not selects(selector, labels):
            problems.append(f"{doc.label()}: spec.selector {selector} does not match the pod template labels "
                            f"{labels}")
    return problems


def check_volumes(where: str, volumes: dict[str, dict[str, Any]], claims: set[str], configmaps: set[str]) -> list[str]:
    """PVCs and ConfigMaps that pod volumes use are defined by some manifest."""
    problems = []
    for vol in volumes.values():
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in claims:
            problems.append(f"{where}: volume {vol['name']!r} uses PVC {claim!r}, which no manifest defines")
        cm = (vol.get("configMap") or {}).get("name")
        if cm and cm not in configmaps:
            problems.append(f"{where}: volume {vol['name']!r} uses ConfigMap {cm!r}, which no manifest defines")
    return problems


def check_container_security(cwhere: str, c: dict[str, Any], psc: dict[str, Any],
                             volumes: dict[str, dict[str, Any]]) -> list[str]:
    """Non-root, read-only root filesystem (with an emptyDir /tmp), no escalation, no capabilities, seccomp."""
    problems = []
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
        if volumes.get(m.get("name")) is None:
            problems.append(f"{cwhere}: volumeMount {m.get('name')!r} names no volume")
    return problems


def check_container_resources(cwhere: str, c: dict[str, Any]) -> list[str]:
    res = c.get("resources") or {}
    problems = [f"{cwhere}: no resources.requests.{kind} (HPA utilization is measured against requests)"
                for kind in ("cpu", "memory") if kind not in (res.get("requests") or {})]
    if "memory" not in (res.get("limits") or {}):
        problems.append(f"{cwhere}: no resources.limits.memory")
    return problems


def check_container_probes(cwhere: str, c: dict[str, Any], is_deployment: bool) -> list[str]:
    """Probes point at container ports; a Deployment's containers have liveness and readiness probes."""
    problems = []
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c.get(probe_name)
        if probe is None:
            continue
        action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
        if "port" in action and port_of(c, action["port"]) is None:
            problems.append(f"{cwhere}: {probe_name} port {action['port']!r} is not a container port")
    if is_deployment:
        problems += [f"{cwhere}: no {name}" for name in ("livenessProbe", "readinessProbe") if name not in c]
    return problems


def check_pods(docs: Sequence[Doc]) -> list[str]:
    """Volumes, grace period, security, resources and probes of the service's own pods."""
    problems = []
    claims = {d.name for d in docs if d.kind == "PersistentVolumeClaim"}
    configmaps = {d.name for d in docs if d.kind == "ConfigMap"}
    for doc, pod, _labels in pod_specs(docs):
        where = doc.label()
        psc = pod.get("securityContext") or {}
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        problems += check_volumes(where, volumes, claims, configmaps)
        if doc.kind == "Deployment" and not isinstance(pod.get("terminationGracePeriodSeconds"), int):
            problems.append(f"{where}: no terminationGracePeriodSeconds (the default 30 s is not a decision)")
        for c in pod.get("containers") or []:
            cwhere = f"{where} container {c.get('name')!r}"
            problems += check_container_security(cwhere, c, psc, volumes)
            problems += check_container_resources(cwhere, c)
            problems += check_container_probes(cwhere, c, doc.kind == "Deployment")
    return problems


def check_services(docs: Sequence[Doc], workloads: PodSpecs) -> list[str]:
    """Each Service selects pods and its target ports are ports of those pods' containers."""
    problems = []
    for svc in (d for d in docs if d.kind == "Service"):
        selector = svc.spec.get("selector") or {}
        targets = [(doc, pod) for doc, pod, labels in workloads if selects(selector, labels)]
        if not targets:
            problems.append(f"{svc.label()}: selector {selector} matches no Deployment's pod labels")
            continue
        for port in svc.spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for doc, pod in targets:
                if not any(port_of(c, target) for c in pod.get("containers") or []):
                    problems.append(f"{svc.label()}: targetPort {target!r} is not a container port of "
                                    f"{doc.kind}/{doc.name}")
    return problems


def check_disruption_budgets(docs: Sequence[Doc], workloads: PodSpecs) -> list[str]:
    return [f"{pdb.label()}: selector {pdb.spec.get('selector') or {}} matches no Deployment's pod labels"
            for pdb in docs if pdb.kind == "PodDisruptionBudget"
            and not any(selects(pdb.spec.get("selector") or {}, labels) for _, _, labels in workloads)]


def check_service_monitors(docs: Sequence[Doc]) -> list[str]:
    """Each ServiceMonitor selects a Service and scrapes one of its named ports."""
    problems = []
    services = [d for d in docs if d.kind == "Service"]
    for sm in (d for d in docs if d.kind == "ServiceMonitor"):
        selector = sm.spec.get("selector") or {}
        selected = [s for s in services if selects(selector, (s.body.get("metadata") or {}).get("labels") or {})]
        if not selected:
            problems.append(f"{sm.label()}: selector matches no Service")
        port_names = {p.get("name") for s in selected for p in s.spec.get("ports") or []}
        for ep in sm.spec.get("endpoints") or []:
            if ep.get("port") and ep["port"] not in port_names:
                problems.append(f"{sm.label()}: endpoint port {ep['port']!r} is no port of the selected Services")
    return problems


def check_workloads(docs: Sequence[Doc]) -> list[str]:
    """Every wiring, security and resource check on the workloads in ``docs``."""
    # Security and resource rules are for the service's own pods; the dev Kafka StatefulSet (third-party
    # image) is only checked for wiring: its Service must reach its ports.
    workloads = pod_specs([d for d in docs if d.kind != "Pod"], kinds=("Deployment", "StatefulSet"))
    return (check_selectors(docs) + check_pods(docs) + check_services(docs, workloads)
            + check_disruption_budgets(docs, workloads) + check_service_monitors(docs))
