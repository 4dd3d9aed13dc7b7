"""A real Kubernetes control plane on 127.0.0.1 for PR1's manifests, built from upstream source and cached.

    python PR1_horizontal_pod_autoscaling/local_cluster.py --build-only   # build once (10-20 min cold), then exit
    python PR1_horizontal_pod_autoscaling/local_cluster.py                # etcd + kube-apiserver + controllers + KEDA
    export KUBECONFIG=...   # the path in the JSON line it prints; then kubectl as usual; Ctrl-C stops everything

It starts etcd, kube-apiserver (RBAC, PodSecurity admission, the aggregation layer), kube-controller-manager
(Deployments, ReplicaSets, Jobs, the HPA controller with a short sync period) and, unless ``--no-keda``, KEDA's
operator and metrics API server registered as ``external.metrics.k8s.io``, with the upstream CRDs
(ServiceMonitor, ScaledObject) installed. Once the API server answers it prints one JSON line with the
kubeconfig, the server URL and the pids. There is no scheduler and no kubelet: pods stay Pending and no container
runs, so the inference service itself runs as local processes (``PR2_async_inference/local_stack.py``).
SIGINT or SIGTERM at any moment, start-up included, stops every process it started, by pid.
Importable: :func:`start_local_cluster` / :func:`stop_local_cluster` (the tests use them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from PR1_horizontal_pod_autoscaling.cluster import keda
from PR1_horizontal_pod_autoscaling.cluster.control_plane import (
    DEFAULT_HPA_SYNC_S,
    ControlPlane,
    start_control_plane,
    stop_control_plane,
)
from PR1_horizontal_pod_autoscaling.cluster.toolchain import (
    ETCD_VERSION,
    KEDA_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    cache_root,
    ensure_binaries,
)
from PR2_async_inference.processes import interrupt_on_stop_signals, serve_until_stopped, stop_all, track_started

logger = logging.getLogger(__name__)


def start_local_cluster(
    dir: Path | str | None = None, *, with_keda: bool = True, hpa_sync_s: int = DEFAULT_HPA_SYNC_S,
    binaries: Binaries | None = None,
) -> ControlPlane:
    """Build what is missing, then start the control plane (and KEDA); stop it with :func:`stop_local_cluster`.

    A failure or an interrupt part-way stops whatever had started.
    """
    binaries = binaries or ensure_binaries(keda=with_keda)
    dir = Path(dir or tempfile.mkdtemp(prefix="local-cluster-")).resolve()  # the kubeconfig names absolute paths
    with track_started() as started:
        try:
            plane = start_control_plane(binaries, dir, hpa_sync_s=hpa_sync_s)
            keda.install_crds(plane, binaries)
            if with_keda:
                plane.procs.extend(keda.start_keda(plane, binaries))
        except BaseException:
            stop_all(started)
            raise
    return plane


def stop_local_cluster(plane: ControlPlane) -> None:
    stop_control_plane(plane)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"A local Kubernetes {KUBERNETES_VERSION} control plane (etcd {ETCD_VERSION}, KEDA "
        f"{KEDA_VERSION}) on 127.0.0.1, built from the Go module proxy and cached in {cache_root()}.",
        add_help=add_help,
    )
    parser.add_argument("--build-only", action="store_true", help="build the binaries (if missing) and exit")
    parser.add_argument("--no-keda", action="store_true", help="no KEDA operator or metrics API server")
    parser.add_argument("--dir", default=None,
                        help="certificates, kubeconfig, etcd data and logs (default: a new temporary folder)")
    parser.add_argument("--hpa-sync-period", type=int, default=DEFAULT_HPA_SYNC_S, metavar="SECONDS",
                        help=f"how often the HPA controller evaluates every HPA (default: {DEFAULT_HPA_SYNC_S}; "
                        "Kubernetes' own default is 15)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from modelops.errors import UsageError

    if args.hpa_sync_period < 1:
        raise UsageError(f"--hpa-sync-period must be >= 1 second, got {args.hpa_sync_period}")
    interrupt_on_stop_signals()
    binaries = ensure_binaries(keda=not args.no_keda)
    if args.build_only:
        info = {"cache": str(cache_root()), "kube_apiserver": str(binaries.kube_apiserver),
                "kubectl": str(binaries.kubectl), "etcd": str(binaries.etcd),
                "keda_operator": str(binaries.keda_operator) if binaries.keda_operator else None}
        print(json.dumps(info), flush=True)
        return info
    plane = start_local_cluster(args.dir, with_keda=not args.no_keda, hpa_sync_s=args.hpa_sync_period,
                                binaries=binaries)
    info = {"kubeconfig": str(plane.kubeconfig), "server": plane.server, "kubectl": str(plane.kubectl_bin),
            "logs": str(plane.dir / "logs"), "pids": plane.pids()}
    serve_until_stopped(f"Kubernetes {KUBERNETES_VERSION} API server at {plane.server}; "
                        f"export KUBECONFIG={plane.kubeconfig}; Ctrl-C stops it", info,
                        lambda: stop_local_cluster(plane))
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
