"""The worker Deployment scaled by KEDA's HPA on the real queue of a running stack, sampled into a timeline.

The stack (Apache Kafka, API, workers) runs as local processes; the worker Deployment and its ScaledObject live
in the local control plane. KEDA's Kafka scaler reads the consumer group's lag from the broker, the HPA
controller asks KEDA's metrics API server for it through the aggregation layer and sets the Deployment's
replicas. Pods are not run (no kubelet), so replicas do not drain the queue: the scenario controls the lag
itself. It stops the stack's workers (the queue grows by exactly what is sent), sends bursts, then starts a
worker that drains it, and samples the measured lag, KEDA's metric, the HPA's desired replicas and the
Deployment's replicas once a second.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane

PR1_DIR = Path(__file__).resolve().parents[1]
WORKER = "inference-worker"


@dataclass(frozen=True)
class ScalingSettings:
    """What the test overlay changes in keda-scaledobject.yaml; everything else is the file's."""

    lag_threshold: int = 10
    min_replicas: int = 1
    polling_interval_s: int = 2
    cooldown_s: int = 10
    scale_down_window_s: int = 20


def expected_replicas(lag: int, lag_threshold: int, min_replicas: int, max_replicas: int) -> int:
    """The HPA formula for KEDA's Kafka trigger (an AverageValue external metric): ceil(lag / threshold),
    clamped to [min, max]."""
    return max(min_replicas, min(max_replicas, math.ceil(lag / lag_threshold)))


def load_documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((PR1_DIR / name).read_text()) if doc]


def scaledobject_overlay(bootstrap: str, group: str, topic: str, settings: ScalingSettings) -> dict[str, Any]:
    """keda-scaledobject.yaml pointed at the local broker, with the short windows of ``settings``.

    The Prometheus trigger is dropped: its server is kube-prometheus-stack's, which the local cluster lacks (the
    adapter rules are evaluated against a real Prometheus separately).
    """
    (scaled,) = load_documents("keda-scaledobject.yaml")
    scaled = copy.deepcopy(scaled)
    spec = scaled["spec"]
    spec["minReplicaCount"] = settings.min_replicas
    spec["pollingInterval"] = settings.polling_interval_s
    spec["cooldownPeriod"] = settings.cooldown_s
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleUp"] = {"stabilizationWindowSeconds": 0,
                           "policies": [{"type": "Percent", "value": 1000, "periodSeconds": 1}]}
    behavior["scaleDown"] = {"stabilizationWindowSeconds": settings.scale_down_window_s,
                             "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]}
    kafka = next(t for t in spec["triggers"] if t["type"] == "kafka")
    kafka["metadata"].update(bootstrapServers=bootstrap, consumerGroup=group, topic=topic,
                             lagThreshold=str(settings.lag_threshold))
    spec["triggers"] = [kafka]
    return scaled


def consumer_lag(bootstrap: str, group: str, topic: str) -> int:
    """Sum over the topic's partitions of end offset minus the group's committed offset (earliest when none,
    as the ScaledObject's ``offsetResetPolicy: earliest``)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scaling-lag")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="scaling-lag", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        committed = admin.list_group_offsets(group).get(group, {})
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        total = 0
        for tp in partitions:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            total += max(0, ends[tp] - position)
        return total
    finally:
        consumer.close()
        admin.close()


@dataclass
class Sample:
    """One reading. ``t_s`` is taken after the replicas are read and before the lag is: the replicas held at
    ``t_s`` or earlier, and the lag held at ``t_s`` or later, so timings between samples are lower bounds."""

    t_s: float
    phase: str
    lag: int
    keda_metric: float | None
    hpa_desired: int | None
    replicas: int | None
    expected: int


def _quantity(value: str | None) -> float | None:
    """A Kubernetes quantity as the HPA reports it ('35', '5500m')."""
    if value is None:
        return None
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def hpa_state(plane: ControlPlane, namespace: str, name: str = WORKER) -> tuple[float | None, int | None]:
    """(KEDA's lag metric as the HPA last read it, desiredReplicas) of the HPA KEDA made.

    The HPA reports an AverageValue metric per replica; times its current replicas that is the value KEDA
    served: the lag, capped at partitions x lagThreshold (``allowIdleConsumers: "false"``)."""
    result = plane.kubectl("get", "hpa", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None, None
    status = json.loads(result.stdout).get("status", {})
    value = None
    for metric in status.get("currentMetrics") or []:
        if metric.get("type") == "External":
            average = _quantity(metric["external"]["current"].get("averageValue"))
            if average is not None:
                value = round(average * status.get("currentReplicas", 0), 1)
    return value, status.get("desiredReplicas")


def deployment_replicas(plane: ControlPlane, namespace: str, name: str = WORKER) -> int | None:
    result = plane.kubectl("get", "deployment", name, "-n", namespace, "-o", "jsonpath={.spec.replicas}",
                           check=False)
    return int(result.stdout) if result.returncode == 0 and result.stdout.strip() else None


class Timeline:
    """Samples once a second while the scenario waits for a condition."""

    def __init__(self, plane: ControlPlane, namespace: str, bootstrap: str, group: str, topic: str,
                 settings: ScalingSettings, max_replicas: int):
        self.plane, self.namespace = plane, namespace
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.settings, self.max_replicas = settings, max_replicas
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.phase = "idle"

    def sample(self) -> Sample:
        for proc in self.plane.procs:  # a controller that died would freeze the replicas: say which one
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        replicas = deployment_replicas(self.plane, self.namespace)
        t_s = round(time.monotonic() - self.started, 1)
        lag = consumer_lag(self.bootstrap, self.group, self.topic)
        metric, desired = hpa_state(self.plane, self.namespace)
        expected = expected_replicas(lag, self.settings.lag_threshold, self.settings.min_replicas,
                                     self.max_replicas)
        sample = Sample(t_s, self.phase, lag, metric, desired, replicas, expected)
        self.samples.append(sample)
        return sample

    def wait_for(self, condition: Callable[[Sample], bool], timeout_s: float, what: str) -> Sample:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tick = time.monotonic()
            sample = self.sample()
            if condition(sample):
                return sample
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        last = self.samples[-1] if self.samples else None
        raise TimeoutError(f"{what}: not reached after {timeout_s:.0f} s; last sample {last}")

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(sample) for sample in self.samples]
