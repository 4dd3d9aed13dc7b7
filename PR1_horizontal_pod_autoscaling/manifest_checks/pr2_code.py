"""The manifests against PR2's code: the ConfigMap's INFERENCE_* keys are settings with PR2's names for topics,
group and ports; containers run PR2's image and listen on its ports; the worker drains before it is killed;
the model registry is mounted from a ConfigMap, parses with PR2's loader and points into the model store."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PR1_horizontal_pod_autoscaling.manifest_checks.documents import (
    Doc,
    container_command,
    is_worker,
    pod_specs,
    pod_template_spec,
)

#: Settings compose and Kubernetes must name alike (one place for each fact: PR2's settings module).
SHARED_SETTINGS = ("requests_topic", "requests_partitions", "results_topic", "results_partitions", "dlq_topic",
                   "dlq_partitions", "worker_group", "api_port", "worker_metrics_port")


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
    for name in SHARED_SETTINGS:
        if getattr(effective, name) != fields[name].default:
            problems.append(f"ConfigMap sets {prefix}{name.upper()}={getattr(effective, name)!r} but PR2's "
                            f"settings say {fields[name].default!r}")
    return effective, problems


def check_images(doc: Doc, pod: dict[str, Any], image: str | None, compose_image: str | None) -> list[str]:
    """Every container runs PR2's IMAGE_NAME and the compose file's image."""
    problems = []
    for c in pod.get("containers") or []:
        if image and c.get("image") != image:
            problems.append(f"{doc.label()}: image {c.get('image')!r} != PR2's IMAGE_NAME {image!r}")
        if compose_image and c.get("image") != compose_image:
            problems.append(f"{doc.label()}: image {c.get('image')!r} != docker-compose.yaml's {compose_image!r}")
    return problems


def check_ports(doc: Doc, pod: dict[str, Any], settings: Any) -> list[str]:
    """The API's or the worker's port from PR2's settings is a container port, and the command listens on it."""
    problems = []
    worker = is_worker(doc)
    want = settings.worker_metrics_port if worker else settings.api_port
    ports = [p.get("containerPort") for c in pod.get("containers") or [] for p in c.get("ports") or []]
    if want not in ports:
        problems.append(f"{doc.label()}: container ports {ports} miss the "
                        f"{'worker metrics' if worker else 'API'} port {want} from PR2's settings")
    command = " ".join(container_command(c) for c in pod.get("containers") or [])
    m = re.search(r"--(?:metrics-)?port[ =](\d+)", command)
    if m and int(m.group(1)) != want:
        problems.append(f"{doc.label()}: command listens on {m.group(1)}, container port is {want}")
    return problems


def check_worker_rollout(doc: Doc, settings: Any) -> list[str]:
    """No surge past the partitions, and a grace period long enough to finish a batch and leave the group."""
    problems = []
    rolling = (doc.spec.get("strategy") or {}).get("rollingUpdate") or {}
    if str(rolling.get("maxSurge", "25%")) not in ("0", "0%"):
        problems.append(f"{doc.label()}: rollingUpdate.maxSurge {rolling.get('maxSurge', '25%')!r} must be 0: "
                        "at max replicas a surge pod is a consumer without a partition and never ready")
    grace = pod_template_spec(doc).get("terminationGracePeriodSeconds", 30)
    floor = max(30.0, settings.session_timeout_ms / 1000)
    if grace < floor:
        problems.append(f"{doc.label()}: terminationGracePeriodSeconds {grace} < {floor:g} s: the worker "
                        "may be killed before it finishes its batch, commits and leaves the group")
    return problems


def check_registry_mounts(doc: Doc, pod: dict[str, Any], settings: Any,
                          configmaps: dict[str, Doc]) -> tuple[list[str], int]:
    """The registry file the pods read is mounted from a ConfigMap and parses with PR2's loader.

    Returns the problems and the largest max_batch_size the registry declares.
    """
    problems = []
    max_batch = 0
    registry_path = Path(str(settings.model_registry))
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for c in pod.get("containers") or []:
        mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
        mount = mounts.get(str(registry_path.parent))
        cm_name = ((volumes.get(mount.get("name")) or {}).get("configMap") or {}).get("name") if mount else None
        cm = configmaps.get(cm_name or "")
        if cm is None or registry_path.name not in (cm.body.get("data") or {}):
            problems.append(f"{doc.label()}: INFERENCE_MODEL_REGISTRY={registry_path} is not mounted from a "
                            "ConfigMap key")
            continue
        model_mounts = [m for m in mounts.values() if "persistentVolumeClaim" in (volumes.get(m.get("name")) or {})]
        reg_problems, batch = check_registry(cm, registry_path.name, model_mounts)
        problems += [f"{doc.label()}: {p}" for p in reg_problems]
        max_batch = max(max_batch, batch)
    return problems, max_batch


def check_code_consistency(docs: Sequence[Doc], settings: Any, settings_module: Any,
                           compose_image: str | None) -> tuple[list[str], int]:
    """Ports, image, registry; returns (problems, the largest max_batch_size of the registry)."""
    problems = []
    max_batch = settings.max_batch_size
    image = getattr(settings_module, "IMAGE_NAME", None)
    configmaps = {d.name: d for d in docs if d.kind == "ConfigMap"}
    for doc, pod, _ in pod_specs(docs):
        problems += check_images(doc, pod, image, compose_image)
        if doc.kind != "Deployment":
            continue
        problems += check_ports(doc, pod, settings)
        if is_worker(doc):
            problems += check_worker_rollout(doc, settings)
        registry_problems, batch = check_registry_mounts(doc, pod, settings, configmaps)
        problems += registry_problems
        max_batch = max(max_batch, batch)
    return problems, max_batch


def check_registry(cm: Doc, key: str, model_mounts: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The registry in ConfigMap ``cm`` under ``key``: valid for PR2, every artifact inside a read-only mount."""
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
