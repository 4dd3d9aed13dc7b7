"""PR1's manifests against a real API server (the local control plane of conftest.py).

Every manifest and the kustomization pass a server-side dry run with strict field validation in a namespace where
PodSecurity ``restricted`` is enforced, with the upstream CRDs installed; a broken copy is rejected; the README's
deploy commands run as written, in its order.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane

pytestmark = pytest.mark.slow
PR1 = Path(__file__).resolve().parents[2] / "PR1_horizontal_pod_autoscaling"
MANIFESTS = sorted(p.name for p in PR1.glob("*.yaml") if p.name != "kustomization.yaml" and not p.name.startswith("."))
#: Manifests whose objects name their own namespace (prometheus-adapter's rules live with the adapter).
OWN_NAMESPACE = {"prometheus-adapter-config.yaml": "monitoring"}
#: README commands that need more than an API server, and why they are not run here.
NEEDS_MORE = {
    "wait": "a Job completes only when its pod runs: no kubelet",
    "rollout": "a rollout finishes (or restarts prometheus-adapter) only with running pods: no kubelet",
    "get --raw": "custom.metrics.k8s.io is prometheus-adapter's; external.metrics.k8s.io here is KEDA's",
}


def restricted_namespace(plane: ControlPlane, name: str) -> None:
    plane.kubectl("create", "namespace", name, check=False)
    plane.kubectl("label", "--overwrite", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/warn=restricted")


def assert_no_policy_warning(result: subprocess.CompletedProcess) -> None:
    assert "would violate PodSecurity" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def dry_run_namespace(local_cluster: ControlPlane) -> str:
    restricted_namespace(local_cluster, "pr1-dry-run")
    local_cluster.kubectl("create", "namespace", "monitoring", check=False)
    return "pr1-dry-run"


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_passes_a_strict_server_side_dry_run(local_cluster: ControlPlane, dry_run_namespace: str,
                                                      manifest: str) -> None:
    namespace = OWN_NAMESPACE.get(manifest, dry_run_namespace)
    result = local_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace,
                                   "-f", str(PR1 / manifest), check=False)
    assert result.returncode == 0, result.stderr
    assert_no_policy_warning(result)
    assert "(server dry run)" in result.stdout


def test_kustomization_passes_a_strict_server_side_dry_run(local_cluster: ControlPlane,
                                                           dry_run_namespace: str) -> None:
    result = local_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-k", str(PR1), check=False)
    assert result.returncode == 0, result.stderr
    assert_no_policy_warning(result)
    created = {line.split()[0] for line in result.stdout.splitlines()}
    assert {"horizontalpodautoscaler.autoscaling/inference-worker", "deployment.apps/inference-worker",
            "servicemonitor.monitoring.coreos.com/inference-service"} <= created


def test_a_broken_copy_is_rejected(local_cluster: ControlPlane, dry_run_namespace: str, tmp_path: Path) -> None:
    """An unknown field fails strict validation, and a pod that may escalate privileges fails PodSecurity
    ``restricted``."""
    docs = [d for d in yaml.safe_load_all((PR1 / "k8s-deployment.yaml").read_text()) if d]
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "inference-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # 'resources'
    broken = tmp_path / "k8s-deployment.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result = local_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", dry_run_namespace,
                                   "-f", str(broken), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].resource"' in result.stderr

    (pod,) = [d for d in yaml.safe_load_all((PR1 / "model-loader.yaml").read_text()) if d]
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    privileged = tmp_path / "model-loader.yaml"
    privileged.write_text(yaml.safe_dump(pod))
    result = local_cluster.kubectl("apply", "--dry-run=server", "-n", dry_run_namespace, "-f", str(privileged),
                                   check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr


def readme_deploy_commands() -> list[str]:
    """The ``kubectl`` lines of the README's "3. Deploy" section, in order, comments stripped."""
    text = (PR1 / "README.md").read_text()
    section = text.split("## 3. Deploy", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("kubectl "):
                commands.append(line)
    return commands


def test_readme_deploy_commands_run_as_written(local_cluster: ControlPlane, tmp_path: Path) -> None:
    """Into ``default`` (PodSecurity restricted enforced), with the prerequisites the README names: the CRDs
    (installed with the cluster) and namespace ``monitoring``. kubectl is the cluster's, found on PATH."""
    local_cluster.kubectl("create", "namespace", "monitoring", check=False)
    restricted_namespace(local_cluster, "default")
    env = {**os.environ, "KUBECONFIG": str(local_cluster.kubeconfig),
           "PATH": f"{local_cluster.kubectl_bin.parent}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_deploy_commands()
    assert any("keda-scaledobject.yaml" in c for c in commands) and any(" -k " in c for c in commands)
    skipped = []
    for command in commands:
        verb = next((v for v in NEEDS_MORE if f"kubectl {v}" in command or f" {v} " in command), None)
        if verb is not None:
            skipped.append(verb)
            continue
        result = subprocess.run(shlex.split(command), env=env, cwd=PR1.parent, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert_no_policy_warning(result)
    assert set(skipped) <= set(NEEDS_MORE)
    # What the commands made: the Deployments, one worker HPA (KEDA's, after it took over), the ScaledObject.
    scaled = local_cluster.get_json("scaledobject", "inference-worker", "-n", "default")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "inference-worker"
    hpas = local_cluster.get_json("hpa", "-n", "default")["items"]
    names = sorted(h["metadata"]["name"] for h in hpas)
    assert names == ["inference-api", "inference-worker"]
    for name in ("inference-api", "inference-worker"):
        assert local_cluster.get_json("deployment", name, "-n", "default")["spec"]["replicas"] >= 1
