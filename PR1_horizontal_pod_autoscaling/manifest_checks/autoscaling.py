"""Autoscalers: every HPA and KEDA ScaledObject targets a Deployment that exists, one autoscaler per
Deployment, the worker never scales past the requests topic's partitions, and the queue targets make sense
for PR2's batching and backpressure settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PR1_horizontal_pod_autoscaling.manifest_checks.documents import Doc, is_worker


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2k", "16") as a float."""
    text = str(value)
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if text and text[-1] in scale:
        return float(text[:-1]) * scale[text[-1]]
    return float(text)


def scale_target(doc: Doc, ref: Any, deployments: dict[str, Doc]) -> tuple[Doc | None, list[str]]:
    """The Deployment ``scaleTargetRef`` names, or the problem with the reference."""
    if not isinstance(ref, dict) or not ref.get("name"):
        return None, [f"{doc.label()}: no scaleTargetRef"]
    if ref.get("kind", "Deployment") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
        return None, [f"{doc.label()}: scaleTargetRef {ref} is not an apps/v1 Deployment"]
    target = deployments.get(ref["name"])
    if target is None:
        return None, [f"{doc.label()}: scaleTargetRef names Deployment {ref['name']!r}, which does not "
                      f"exist (have: {', '.join(sorted(deployments)) or 'none'})"]
    return target, []


def check_hpa(doc: Doc, deployments: dict[str, Doc], settings: Any, max_batch: int) -> tuple[list[str], Doc | None]:
    """autoscaling/v2, target, replica bounds, behavior, metrics; for the worker, partitions and queue targets.

    Returns the problems and the Deployment the HPA scales (None if it names none that exists).
    """
    problems = []
    spec = doc.spec
    if doc.body.get("apiVersion") != "autoscaling/v2":
        problems.append(f"{doc.label()}: apiVersion {doc.body.get('apiVersion')!r}; use autoscaling/v2")
    target, ref_problems = scale_target(doc, spec.get("scaleTargetRef"), deployments)
    problems += ref_problems
    lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
    if not isinstance(hi, int) or hi < lo:
        problems.append(f"{doc.label()}: maxReplicas {hi} < minReplicas {lo}")
    behavior = spec.get("behavior") or {}
    if not ("scaleUp" in behavior and "scaleDown" in behavior):
        problems.append(f"{doc.label()}: behavior needs scaleUp and scaleDown")
    if not spec.get("metrics"):
        problems.append(f"{doc.label()}: no metrics")
    if target is not None and is_worker(target):
        partitions = settings.requests_partitions
        if isinstance(hi, int) and hi > partitions:
            problems.append(f"{doc.label()}: worker maxReplicas {hi} > {partitions} partitions of "
                            f"{settings.requests_topic}; the extra workers would sit idle")
        problems += check_worker_targets(doc, spec.get("metrics") or [], settings, max_batch, hi)
    return problems, target


def check_scaled_object(doc: Doc, target: Doc, settings: Any, max_batch: int) -> list[str]:
    """KEDA on the worker: replica bound within the partitions, Kafka trigger matching PR2's settings."""
    if not is_worker(target):
        return []
    problems = []
    hi = doc.spec.get("maxReplicaCount", 100)
    partitions = settings.requests_partitions
    if hi > partitions:
        problems.append(f"{doc.label()}: worker maxReplicaCount {hi} > {partitions} partitions of "
                        f"{settings.requests_topic}")
    return problems + check_keda_triggers(doc, doc.spec, settings, max_batch)


def adopted_hpa(doc: Doc) -> str | None:
    """The HPA a ScaledObject takes over (transfer-hpa-ownership): it and KEDA are one autoscaler, not two."""
    hpa_name = ((doc.spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("name")
    adopts = (doc.body.get("metadata") or {}).get("annotations", {}).get(
        "scaledobject.keda.sh/transfer-hpa-ownership") == "true"
    return hpa_name if adopts and hpa_name else None


def check_autoscalers(docs: Sequence[Doc], settings: Any, max_batch: int) -> list[str]:
    """Every HPA and ScaledObject in ``docs``, and one autoscaler per Deployment."""
    problems = []
    deployments = {d.name: d for d in docs if d.kind == "Deployment"}
    owners: dict[str, list[str]] = {}
    for doc in docs:
        if doc.kind not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        if doc.kind == "HorizontalPodAutoscaler":
            hpa_problems, target = check_hpa(doc, deployments, settings, max_batch)
            problems += hpa_problems
            if target is not None:
                owners.setdefault(target.name, []).append(doc.label())
            continue
        target, ref_problems = scale_target(doc, doc.spec.get("scaleTargetRef"), deployments)
        problems += ref_problems
        if target is None:
            continue
        if (hpa_name := adopted_hpa(doc)) is not None:
            owners[target.name] = [o for o in owners.get(target.name, [])
                                   if not o.endswith(f"HorizontalPodAutoscaler/{hpa_name}")]
        owners.setdefault(target.name, []).append(doc.label())
        problems += check_scaled_object(doc, target, settings, max_batch)
    for name, who in owners.items():
        if len(who) > 1:
            problems.append(f"Deployment/{name} has {len(who)} autoscalers that would fight: {', '.join(who)}")
    return problems


def check_worker_targets(doc: Doc, metrics: list[dict[str, Any]], settings: Any, max_batch: int,
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
        value = quantity(value)
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


def check_keda_triggers(doc: Doc, spec: dict[str, Any], settings: Any, max_batch: int) -> list[str]:
    """The Kafka trigger reads the worker's topic and group, with a lag threshold of at least one batch."""
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
        if lag is None or quantity(lag) < max_batch:
            problems.append(f"{doc.label()}: lagThreshold {lag!r} is below one batch ({max_batch})")
        if "activationLagThreshold" not in meta:
            problems.append(f"{doc.label()}: no activationLagThreshold")
        if meta.get("offsetResetPolicy") != "earliest":
            problems.append(f"{doc.label()}: offsetResetPolicy must be 'earliest' like the worker's consumer")
    return problems
