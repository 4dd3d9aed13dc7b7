"""KEDA on the local control plane: its CRDs, its operator, and its metrics API server behind the aggregation layer.

Both run as local processes with the admin kubeconfig (what their in-cluster Deployments do with a service
account). kube-apiserver reaches the metrics API server through the APIService ``v1beta1.external.metrics.k8s.io``,
whose Service is an ``ExternalName`` for ``localhost``: without kube-proxy no ClusterIP routes anywhere, while an
ExternalName is resolved by the API server itself. The operator serves the metrics API server over gRPC with
mutual TLS, on loopback too.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.cluster.toolchain import Binaries
from PR2_async_inference.processes import Proc, free_port, spawn, wait_http, wait_port

NAMESPACE = "keda"
METRICS_APISERVER = "keda-metrics-apiserver"
EXTERNAL_METRICS_API = "v1beta1.external.metrics.k8s.io"


def install_crds(plane: ControlPlane, binaries: Binaries) -> None:
    """Apply the upstream CRDs (ServiceMonitor, KEDA's) and wait until the API serves them."""
    for crd in binaries.crds:
        # Server-side: KEDA's CRDs are too large for the last-applied annotation of a client-side apply.
        plane.kubectl("apply", "--server-side", "-f", str(crd))
    names = [f"crd/{crd.name.split('_', 1)[1].removesuffix('.yaml')}.{crd.name.split('_', 1)[0]}"
             for crd in binaries.crds]
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def _keda_env(plane: ControlPlane) -> dict[str, str]:
    return {
        "KUBECONFIG": str(plane.kubeconfig),
        "WATCH_NAMESPACE": "",  # all namespaces
        "POD_NAMESPACE": NAMESPACE,
        "POD_NAME": "keda-operator-local",
        "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        "OPERATOR_NAME": "keda-operator",
    }


def _apiservice_manifest(plane: ControlPlane, port: int) -> str:
    ca_bundle = base64.b64encode(plane.pki.ca_cert.read_bytes()).decode()
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {METRICS_APISERVER}
  namespace: {NAMESPACE}
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - name: https
      port: {port}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: {EXTERNAL_METRICS_API}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {ca_bundle}
  service:
    name: {METRICS_APISERVER}
    namespace: {NAMESPACE}
    port: {port}
"""


def _wait_api_available(plane: ControlPlane, procs: list[Proc], timeout_s: float = 90) -> None:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        result = plane.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1", check=False)
        if result.returncode == 0:
            return
        last = result.stderr.strip()
        time.sleep(1)
    raise TimeoutError(f"external.metrics.k8s.io not served through the aggregation layer after {timeout_s:.0f} s "
                       f"({last})")


def start_keda(plane: ControlPlane, binaries: Binaries) -> list[Proc]:
    """Start KEDA's operator and metrics API server and register the external metrics API; return both procs."""
    if binaries.keda_operator is None or binaries.keda_adapter is None:
        raise RuntimeError("KEDA was not built: ensure_binaries(keda=True)")
    log_dir = plane.dir / "logs"
    certs = plane.dir / "keda-certs"
    certs.mkdir(exist_ok=True)
    for src, name in ((plane.pki.ca_cert, "ca.crt"), (plane.pki.serving_cert, "tls.crt"),
                      (plane.pki.serving_key, "tls.key")):
        shutil.copy(src, certs / name)
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    env = _keda_env(plane)
    grpc_port, probe_port = free_port(), free_port()
    operator = spawn("keda-operator", [
        str(binaries.keda_operator), "--leader-elect=false", "--zap-log-level=info",
        f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        f"--metrics-service-bind-address=127.0.0.1:{grpc_port}", f"--cert-dir={certs}", f"--ca-dir={certs}",
        "--enable-webhook-patching=false",
    ], log_dir, env=env, port=grpc_port)
    procs = [operator]
    wait_http(f"http://127.0.0.1:{probe_port}/readyz", timeout_s=90, proc=operator.popen)
    wait_port(grpc_port, timeout_s=60, proc=operator.popen)
    api_port = free_port()
    adapter = spawn("keda-metrics-apiserver", [
        str(binaries.keda_adapter), "--bind-address=127.0.0.1", f"--secure-port={api_port}",
        f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}", f"--cert-dir={certs}",
        f"--authentication-kubeconfig={plane.kubeconfig}", f"--authorization-kubeconfig={plane.kubeconfig}",
        f"--lister-kubeconfig={plane.kubeconfig}", f"--metrics-service-address=127.0.0.1:{grpc_port}",
        f"--port={free_port()}", "--v=1",
    ], log_dir, env=env, port=api_port)
    procs.append(adapter)
    wait_port(api_port, timeout_s=60, proc=adapter.popen)
    plane.kubectl("apply", "-f", "-", input=_apiservice_manifest(plane, api_port))
    _wait_api_available(plane, procs)
    return procs


def external_metric(plane: ControlPlane, namespace: str, name: str, selector: str) -> subprocess.CompletedProcess:
    """``kubectl get --raw`` of one external metric, as the HPA controller asks for it."""
    path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{name}?labelSelector={selector}"
    return plane.kubectl("get", "--raw", path, check=False)
