"""PR1: the Kubernetes manifests validate offline and agree with PR2's code.

The checker is PR1_horizontal_pod_autoscaling/validate_manifests.py (its checks in manifest_checks/); these
tests run it on the real manifests (it must pass) and on broken copies (each must fail with the problem named).
The metric names the adapter rules, HPAs and KEDA read are compared with what the running API and worker serve
on /metrics (``test_manifests_match_running_services``, which starts a broker, the API and a worker).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.cli import run_cli
from PR1_horizontal_pod_autoscaling import validate_manifests as vm
from PR1_horizontal_pod_autoscaling.manifest_checks.metrics import exposed_series_names, promql_metric_names
from PR1_horizontal_pod_autoscaling.measure_footprint import random_model_registry
from PR2_async_inference import settings as pr2_settings

PR1 = vm.HERE
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (needed for kustomize)")


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def code_metric_names() -> set[str]:
    return vm.code_metrics()


@pytest.fixture()
def pr1_copy(tmp_path: Path) -> Path:
    """A writable copy of the manifest folder (manifests, kustomization, yamllint config)."""
    dst = tmp_path / "pr1"
    dst.mkdir()
    for path in PR1.iterdir():
        if path.suffix == ".yaml":
            shutil.copy(path, dst / path.name)
    return dst


def mutate(root: Path, filename: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
    docs = docs_of(root / filename)
    change(docs)
    (root / filename).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def problems_after(root: Path, names: set[str], **kwargs: Any) -> list[str]:
    kwargs.setdefault("kube_versions", ("1.33",))
    kwargs.setdefault("lint", False)  # a dumped copy loses the hand formatting; linted separately
    return vm.run_checks(root, exported_metrics=names, **kwargs).problems


# ------------------------------------------------------------------------------------- the real manifests


@needs_kubectl
def test_manifests_pass_every_check(code_metric_names: set[str]) -> None:
    report = vm.run_checks(exported_metrics=code_metric_names, kube_versions=("1.30", "1.33"))
    assert report.ok, "\n".join(report.problems)
    assert any("kubectl kustomize" in n for n in report.notes)


def test_every_manifest_is_strictly_valid_for_two_kubernetes_versions() -> None:
    versions = vm.check_versions(["1.30", "1.33"])
    kinds = set()
    for path in vm.manifest_files(PR1):
        for doc in vm.load_docs(path):
            assert vm.check_schema(doc, versions) == [], doc.label()
            kinds.add(doc.kind)
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
            "ScaledObject", "ServiceMonitor"} <= kinds


def test_yamllint_passes_with_the_committed_config() -> None:
    files = [*vm.manifest_files(PR1), PR1 / "kustomization.yaml"]
    assert vm.check_yamllint(files, PR1 / ".yamllint.yaml") == []
    proc = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-c", str(PR1 / ".yamllint.yaml"),
                           str(PR1)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@needs_kubectl
def test_kustomize_renders_one_autoscaler_per_deployment() -> None:
    proc = subprocess.run([KUBECTL, "kustomize", str(PR1)], capture_output=True, text=True, check=True)
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert ("PersistentVolumeClaim", "inference-models") in kinds
    assert {("Deployment", "inference-api"), ("Deployment", "inference-worker")} <= set(kinds)
    hpas = [d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"]
    targets = [h["spec"]["scaleTargetRef"]["name"] for h in hpas]
    assert sorted(targets) == ["inference-api", "inference-worker"]
    # The worker HPA that kustomize deploys is exactly custom-metrics-hpa.yaml (the patch replaced hpa.yaml's).
    worker = find(rendered, "HorizontalPodAutoscaler", "inference-worker")
    assert worker["spec"] == docs_of(PR1 / "custom-metrics-hpa.yaml")[0]["spec"]
    # KEDA is the alternative, not part of the default.
    assert not any(d["kind"] == "ScaledObject" for d in rendered)


def test_worker_never_scales_past_the_partitions() -> None:
    partitions = pr2_settings.Settings().requests_partitions
    worker_hpas = [find(docs_of(PR1 / f), "HorizontalPodAutoscaler", "inference-worker")
                   for f in ("hpa.yaml", "custom-metrics-hpa.yaml")]
    assert all(h["spec"]["maxReplicas"] <= partitions for h in worker_hpas)
    keda = docs_of(PR1 / "keda-scaledobject.yaml")[0]
    assert keda["spec"]["maxReplicaCount"] <= partitions
    assert keda["spec"]["minReplicaCount"] == 0  # scale to zero


def test_kafka_names_and_image_match_pr2() -> None:
    settings = pr2_settings.Settings()
    keda = docs_of(PR1 / "keda-scaledobject.yaml")[0]
    kafka = next(t for t in keda["spec"]["triggers"] if t["type"] == "kafka")["metadata"]
    assert kafka["topic"] == settings.requests_topic
    assert kafka["consumerGroup"] == settings.worker_group
    config = find(docs_of(PR1 / "k8s-deployment.yaml"), "ConfigMap", "inference-config")["data"]
    assert kafka["bootstrapServers"] == config["INFERENCE_KAFKA_BOOTSTRAP_SERVERS"]
    images = {c["image"] for d in docs_of(PR1 / "k8s-deployment.yaml") if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {pr2_settings.IMAGE_NAME}
    compose = vm.DEFAULT_COMPOSE
    assert compose.exists(), f"{compose} is missing"
    image, problems = vm.compose_image(compose)
    assert problems == []
    assert images == {image}


def test_images_must_match_the_compose_file(tmp_path: Path, code_metric_names: set[str]) -> None:
    """The check parses a compose file; a different tag for the service or for Kafka is a problem."""
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {
        "kafka": {"image": "apache/kafka:0.0.1"},
        "api": {"build": {"context": ".."}, "image": "inference-service:9.9.9"},
        "worker": {"image": "inference-service:9.9.9"}}}))
    problems = problems_after(PR1, code_metric_names, compose_file=compose)
    assert any("!= docker-compose.yaml's 'inference-service:9.9.9'" in p for p in problems), problems
    assert any("!= docker-compose.yaml's apache/kafka:0.0.1" in p for p in problems), problems


def test_a_compose_image_variable_is_compared_by_its_default(tmp_path: Path, code_metric_names: set[str]) -> None:
    """``${KAFKA_IMAGE:-apache/kafka:X}`` (a local image for offline machines) still names the upstream image."""
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {
        "kafka": {"image": "${KAFKA_IMAGE:-apache/kafka:0.0.1}"},
        "api": {"build": {"context": ".."}, "image": "inference-service:0.1.0"}}}))
    problems = problems_after(PR1, code_metric_names, compose_file=compose)
    assert any("!= docker-compose.yaml's apache/kafka:0.0.1" in p for p in problems), problems


# ------------------------------------------------------------------------------------- broken manifests


def _hpa(docs: list[dict[str, Any]], name: str = "inference-api") -> dict[str, Any]:
    return find(docs, "HorizontalPodAutoscaler", name)


def _deploy(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return find(docs, "Deployment", name)


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return _deploy(docs, name)["spec"]["template"]["spec"]["containers"][0]


def _adapter_rename(docs: list[dict[str, Any]]) -> None:
    cm = docs[0]
    cm["data"]["config.yaml"] = cm["data"]["config.yaml"].replace("inference_consumer_lag",
                                                                  "inference_queue_backlog")


def _keda_trigger(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(t for t in docs[0]["spec"]["triggers"] if t["type"] == kind)["metadata"]


MUTATIONS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], None], str]] = {
    "v1-style HPA field": (
        "hpa.yaml", lambda d: _hpa(d)["spec"].update(targetCPUUtilizationPercentage=60),
        "'targetCPUUtilizationPercentage' was unexpected"),
    "autoscaling/v1 HPA": (
        "hpa.yaml", lambda d: _hpa(d).update(apiVersion="autoscaling/v1", spec={
            "scaleTargetRef": _hpa(d)["spec"]["scaleTargetRef"], "minReplicas": 2, "maxReplicas": 4,
            "targetCPUUtilizationPercentage": 60}),
        "use autoscaling/v2"),
    "missing scaleTargetRef": (
        "hpa.yaml", lambda d: _hpa(d)["spec"].pop("scaleTargetRef"), "no scaleTargetRef"),
    "scaleTargetRef to a missing Deployment": (
        "hpa.yaml", lambda d: _hpa(d)["spec"]["scaleTargetRef"].update(name="inference-gateway"),
        "'inference-gateway', which does not exist"),
    "HPA without behavior": (
        "hpa.yaml", lambda d: _hpa(d)["spec"].pop("behavior"), "behavior needs scaleUp and scaleDown"),
    "worker maxReplicas above partitions": (
        "hpa.yaml", lambda d: _hpa(d, "inference-worker")["spec"].update(maxReplicas=12),
        "worker maxReplicas 12 > 6 partitions"),
    "custom HPA maxReplicas above partitions": (
        "custom-metrics-hpa.yaml", lambda d: d[0]["spec"].update(maxReplicas=7), "worker maxReplicas 7 > 6"),
    "KEDA maxReplicaCount above partitions": (
        "keda-scaledobject.yaml", lambda d: d[0]["spec"].update(maxReplicaCount=10),
        "worker maxReplicaCount 10 > 6"),
    "adapter reads a metric the code does not export": (
        "prometheus-adapter-config.yaml", _adapter_rename,
        "metric 'inference_queue_backlog' is not exported"),
    "HPA asks for a metric no adapter rule serves": (
        "custom-metrics-hpa.yaml",
        lambda d: d[0]["spec"]["metrics"][1]["external"]["metric"].update(name="inference_queue_depth"),
        "'inference_queue_depth' is neither exported"),
    "KEDA Prometheus query on an unknown metric": (
        "keda-scaledobject.yaml",
        lambda d: _keda_trigger(d, "prometheus").update(query="max(inference_backlog_seconds)"),
        "prometheus trigger reads 'inference_backlog_seconds'"),
    "KEDA topic differs from PR2's settings": (
        "keda-scaledobject.yaml", lambda d: _keda_trigger(d, "kafka").update(topic="requests"),
        "kafka trigger topic 'requests' != 'inference-requests'"),
    "KEDA consumer group differs": (
        "keda-scaledobject.yaml", lambda d: _keda_trigger(d, "kafka").update(consumerGroup="workers"),
        "consumerGroup 'workers' != 'inference-workers'"),
    "KEDA unknown trigger field": (
        "keda-scaledobject.yaml", lambda d: _keda_trigger(d, "kafka").update(lagTreshold="32"),
        "lagTreshold"),
    "KEDA without the HPA hand-over": (
        "keda-scaledobject.yaml", lambda d: d[0]["metadata"].pop("annotations"),
        "has 2 autoscalers that would fight"),
    "lag target below one batch": (
        "custom-metrics-hpa.yaml",
        lambda d: d[0]["spec"]["metrics"][0]["pods"]["target"].update(averageValue="4"),
        "below one batch (16)"),
    "age target above the backpressure bound": (
        "custom-metrics-hpa.yaml",
        lambda d: d[0]["spec"]["metrics"][1]["external"]["target"].update(value="90"),
        "oldest-age target 90 s >= backpressure_max_age_s"),
    "Service targetPort not a container port": (
        "k8s-deployment.yaml", lambda d: find(d, "Service", "inference-api")["spec"]["ports"][0].update(
            targetPort="web"), "targetPort 'web' is not a container port"),
    "selector does not match pod labels": (
        "k8s-deployment.yaml", lambda d: _deploy(d, "inference-worker")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "worker"}), "does not match the pod template labels"),
    "Service selects no pods": (
        "k8s-deployment.yaml", lambda d: find(d, "Service", "inference-worker")["spec"].update(
            selector={"app.kubernetes.io/name": "inference-workers"}), "matches no Deployment's pod labels"),
    "PodDisruptionBudget selects no pods": (
        "k8s-deployment.yaml", lambda d: find(d, "PodDisruptionBudget", "inference-worker")["spec"]["selector"][
            "matchLabels"].update({"app.kubernetes.io/name": "worker"}),
        "PodDisruptionBudget/inference-worker: selector"),
    "probe on a missing port": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-api")["readinessProbe"]["httpGet"].update(
            port=8080), "readinessProbe port 8080 is not a container port"),
    "container port differs from PR2's settings": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-worker")["ports"][0].update(containerPort=9200),
        "miss the worker metrics port 9100"),
    "image differs from PR2's": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-api").update(image="inference-service:latest"),
        "!= PR2's IMAGE_NAME 'inference-service:0.1.0'"),
    "ConfigMap key that is no setting": (
        "k8s-deployment.yaml", lambda d: find(d, "ConfigMap", "inference-config")["data"].update(
            INFERENCE_REQUEST_TOPIC="inference-requests"), "INFERENCE_REQUEST_TOPIC is no setting"),
    "ConfigMap topic differs from PR2's": (
        "k8s-deployment.yaml", lambda d: find(d, "ConfigMap", "inference-config")["data"].update(
            INFERENCE_REQUESTS_TOPIC="requests"), "INFERENCE_REQUESTS_TOPIC='requests'"),
    "registry model outside the PVC": (
        "k8s-deployment.yaml", lambda d: find(d, "ConfigMap", "inference-model-registry")["data"].update(
            {"model_registry.yaml": "models:\n  m:\n    artifact: /opt/m.pt\n"}), "outside the model store"),
    "root filesystem writable": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-worker")["securityContext"].update(
            readOnlyRootFilesystem=False), "readOnlyRootFilesystem is not true"),
    "runs as root allowed": (
        "k8s-deployment.yaml", lambda d: _deploy(d, "inference-api")["spec"]["template"]["spec"][
            "securityContext"].pop("runAsNonRoot"), "runAsNonRoot is not true"),
    "topics Job with a writable root filesystem": (
        "k8s-deployment.yaml", lambda d: find(d, "Job", "inference-topics")["spec"]["template"]["spec"]["containers"][
            0]["securityContext"].update(readOnlyRootFilesystem=False), "Job/inference-topics container"),
    "no CPU request": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-worker")["resources"]["requests"].pop("cpu"),
        "no resources.requests.cpu"),
    "model store mounted read-write": (
        "k8s-deployment.yaml", lambda d: _container(d, "inference-worker")["volumeMounts"][1].pop("readOnly"),
        "read-write; mount it readOnly"),
    "worker rollout surges past the partitions": (
        "k8s-deployment.yaml", lambda d: _deploy(d, "inference-worker")["spec"]["strategy"]["rollingUpdate"].update(
            maxSurge=1), "rollingUpdate.maxSurge 1 must be 0"),
    "grace period shorter than a drain": (
        "k8s-deployment.yaml", lambda d: _deploy(d, "inference-worker")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=5), "terminationGracePeriodSeconds 5 <"),
    "ServiceMonitor on a port that does not exist": (
        "servicemonitor.yaml", lambda d: d[0]["spec"]["endpoints"][0].update(port="web"),
        "endpoint port 'web' is no port"),
    "dev Kafka Service misses the broker port": (
        "kafka-dev.yaml", lambda d: find(d, "Service", "kafka")["spec"]["ports"][0].update(targetPort=9094),
        "targetPort 9094 is not a container port of StatefulSet/kafka"),
    "unknown kind": (
        "model-pvc.yaml", lambda d: d.append({"apiVersion": "v1", "kind": "ModelStore",
                                              "metadata": {"name": "x"}}), "unknown kind"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_a_broken_manifest_is_rejected(case: str, pr1_copy: Path, code_metric_names: set[str]) -> None:
    filename, change, expected = MUTATIONS[case]
    mutate(pr1_copy, filename, change)
    problems = problems_after(pr1_copy, code_metric_names)
    assert problems, f"{case}: the checker accepted it"
    assert any(expected in p for p in problems), f"{case}: expected {expected!r} in:\n" + "\n".join(problems)


def test_an_unmutated_copy_passes(pr1_copy: Path, code_metric_names: set[str]) -> None:
    """The mutation tests fail for the mutation, not for the copy or the YAML round trip."""
    for filename in ("hpa.yaml", "k8s-deployment.yaml", "keda-scaledobject.yaml"):
        mutate(pr1_copy, filename, lambda d: None)
    assert problems_after(pr1_copy, code_metric_names) == []


def test_yamllint_rejects_a_duplicate_key(pr1_copy: Path, code_metric_names: set[str]) -> None:
    path = pr1_copy / "hpa.yaml"
    path.write_text(path.read_text().replace("  minReplicas: 2\n", "  minReplicas: 2\n  minReplicas: 3\n", 1))
    problems = problems_after(pr1_copy, code_metric_names, lint=True)
    assert any("duplication of key" in p for p in problems), problems


@needs_kubectl
def test_kustomize_failure_is_reported(pr1_copy: Path, code_metric_names: set[str]) -> None:
    (pr1_copy / "servicemonitor.yaml").unlink()
    problems = problems_after(pr1_copy, code_metric_names)
    assert any("kubectl kustomize" in p and "failed" in p for p in problems), problems


def test_promql_metric_names() -> None:
    assert promql_metric_names('sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)') == set()
    assert promql_metric_names('inference_consumer_lag{namespace!="",pod!=""}') == {"inference_consumer_lag"}
    assert promql_metric_names(
        'histogram_quantile(0.95, sum(rate(inference_latency_seconds_bucket{model="a"}[5m])) by (le))'
    ) == {"inference_latency_seconds_bucket"}
    assert promql_metric_names('{__name__=~"^inference_.*_total$",namespace!=""}') == {
        "~^inference_.*_total$"}


def test_cli_reports_and_exit_codes(pr1_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As a script, in its own process: the real manifests pass.
    ok = subprocess.run([sys.executable, str(PR1 / "validate_manifests.py"), "--json", "--kube-version", "1.33"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"ok": true' in ok.stdout
    # The same entry point in-process for the failures (saves two torch imports).
    mutate(pr1_copy, "hpa.yaml", lambda d: _hpa(d)["spec"].pop("scaleTargetRef"))
    assert run_cli(vm.main, vm.get_args_parser(), ["--root", str(pr1_copy), "--kube-version", "1.33"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM:" in out and "no scaleTargetRef" in out
    assert run_cli(vm.main, vm.get_args_parser(), ["--kube-version", "1.12"]) == 2
    assert "Unsupported Kubernetes version '1.12'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the running services


@pytest.fixture(scope="module")
def live_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Series names served by a real API and a real worker (with the local stack's broker) on 127.0.0.1."""
    from PR2_async_inference import local_stack

    tmp = tmp_path_factory.mktemp("k8s_live")
    # One random-weight ResNet-18 at 32x32: the worker only has to load it.
    stack = local_stack.start_stack(random_model_registry(tmp, "resnet18", 32), workers=1, log_dir=tmp / "logs")
    try:
        texts = []
        for url in (f"{stack.api_url}/metrics", f"{stack.workers[0].info['metrics_url']}/metrics"):
            with urllib.request.urlopen(url, timeout=10) as resp:
                texts.append(resp.read().decode())
    finally:
        local_stack.stop_stack(stack)
    return set().union(*(exposed_series_names(t) for t in texts))


@pytest.mark.slow
@needs_kubectl
def test_manifests_match_running_services(live_metric_names: set[str], pr1_copy: Path) -> None:
    # The queue metrics really are served by the running worker...
    report = vm.run_checks(exported_metrics=live_metric_names, kube_versions=("1.33",))
    assert report.ok, "\n".join(report.problems)
    # ...and the check is against what runs: drop one name and the same manifests fail.
    problems = problems_after(pr1_copy, live_metric_names - {"inference_oldest_request_age_seconds"})
    assert any("inference_oldest_request_age_seconds" in p and "not exported" in p for p in problems), problems
