"""Start and stop the local control plane: etcd, kube-apiserver and kube-controller-manager on 127.0.0.1.

What is real: the API server (admission, PodSecurity, RBAC, validation, the aggregation layer), the store and
every controller of kube-controller-manager that needs no cloud or node (Deployments, ReplicaSets, the
HorizontalPodAutoscaler controller, with a short sync period). What is not there: a scheduler and a kubelet, so
pods stay Pending and no container runs; the workloads that do the work run as local processes beside it.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from PR1_horizontal_pod_autoscaling.cluster.pki import FRONT_PROXY_CLIENT, Pki, make_pki, write_kubeconfig
from PR1_horizontal_pod_autoscaling.cluster.toolchain import Binaries
from PR2_async_inference.processes import Proc, free_port, spawn, stop_all, wait_port

#: Controllers that need a cloud provider or nodes with pod CIDRs; everything else runs.
CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route"
#: How often the HPA controller re-evaluates every HPA (Kubernetes' default is 15 s).
DEFAULT_HPA_SYNC_S = 5
SERVICE_CIDR = "10.96.0.0/16"  # allocated to Services only; nothing routes there without kube-proxy


@dataclass
class ControlPlane:
    """A running control plane: its kubeconfig, the processes, and a ``kubectl`` that targets it."""

    dir: Path
    kubeconfig: Path
    server: str
    pki: Pki
    kubectl_bin: Path
    hpa_sync_s: int
    procs: list[Proc] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Run ``kubectl --kubeconfig KUBECONFIG ARGS``; raise with kubectl's own message when ``check`` fails."""
        cmd = [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pids(self) -> dict[str, int]:
        return {proc.name: proc.pid for proc in self.procs}


def _wait_ready(server: str, pki: Pki, procs: list[Proc], timeout_s: float = 90) -> None:
    """Until ``/readyz`` answers 200 (every post-start hook done, the store reachable)."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    request = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {pki.token}"})
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} during start-up; see {proc.log}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"kube-apiserver at {server} not ready after {timeout_s:.0f} s ({last})")


def start_etcd(binaries: Binaries, dir: Path, log_dir: Path) -> Proc:
    client, peer = free_port(), free_port()
    cmd = [
        str(binaries.etcd), "--name", "local", "--data-dir", str(dir / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"local=http://127.0.0.1:{peer}",
        "--log-level", "warn", "--quota-backend-bytes", str(2 * 1024**3),
    ]
    proc = spawn("etcd", cmd, log_dir, port=client, url=f"http://127.0.0.1:{client}")
    wait_port(client, timeout_s=30, proc=proc.popen)
    return proc


def start_apiserver(binaries: Binaries, pki: Pki, etcd_url: str, log_dir: Path) -> Proc:
    port = free_port()
    cmd = [
        str(binaries.kube_apiserver),
        "--bind-address=127.0.0.1", f"--secure-port={port}", "--advertise-address=127.0.0.1",
        f"--etcd-servers={etcd_url}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}", f"--token-auth-file={pki.token_file}",
        "--authorization-mode=RBAC",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # One API server and no kubelet: nothing would keep the 'kubernetes' Service's endpoints alive anyway.
        "--endpoint-reconciler-type=none",
        # The aggregation layer: kube-apiserver proxies external.metrics.k8s.io to KEDA's metrics server and
        # proves who asks with the front proxy's client certificate.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
        "--profiling=false", "--v=1",
    ]
    proc = spawn("kube-apiserver", cmd, log_dir, port=port, url=f"https://127.0.0.1:{port}")
    wait_port(port, timeout_s=60, proc=proc.popen)
    return proc


def start_controller_manager(binaries: Binaries, pki: Pki, kubeconfig: Path, hpa_sync_s: int,
                             log_dir: Path) -> Proc:
    port = free_port()
    cmd = [
        str(binaries.kube_controller_manager),
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}", "--leader-elect=false",
        f"--controllers={CONTROLLERS}",
        f"--service-account-private-key-file={pki.service_account_key}", f"--root-ca-file={pki.ca_cert}",
        f"--horizontal-pod-autoscaler-sync-period={hpa_sync_s}s",
        "--profiling=false", "--v=2",
    ]
    return spawn("kube-controller-manager", cmd, log_dir, port=port)


def start_control_plane(binaries: Binaries, dir: Path, hpa_sync_s: int = DEFAULT_HPA_SYNC_S) -> ControlPlane:
    """etcd, then kube-apiserver (waited for until ready), then kube-controller-manager.

    Call inside :func:`PR2_async_inference.processes.track_started` so that a failure or a stop signal at any
    point still finds every pid; :func:`stop_control_plane` stops them.
    """
    log_dir = dir / "logs"
    pki = make_pki(dir / "pki")
    etcd = start_etcd(binaries, dir, log_dir)
    apiserver = start_apiserver(binaries, pki, etcd.info["url"], log_dir)
    server = apiserver.info["url"]
    kubeconfig = write_kubeconfig(dir / "kubeconfig", server, pki)
    plane = ControlPlane(dir, kubeconfig, server, pki, binaries.kubectl, hpa_sync_s, [etcd, apiserver])
    _wait_ready(server, pki, plane.procs)
    plane.procs.append(start_controller_manager(binaries, pki, kubeconfig, hpa_sync_s, log_dir))
    return plane


def stop_control_plane(plane: ControlPlane) -> None:
    stop_all(plane.procs)
