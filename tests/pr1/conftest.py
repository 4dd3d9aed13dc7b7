"""Fixtures of the PR1 cluster tests: one local control plane (etcd, kube-apiserver, kube-controller-manager,
KEDA) per session on 127.0.0.1, built from upstream source on first use and cached per user.

A missing Go toolchain or a failed build fails these tests with the reason; they never skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.local_cluster import start_local_cluster, stop_local_cluster


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = start_local_cluster(tmp_path_factory.mktemp("local_cluster"), with_keda=True, hpa_sync_s=5)
    try:
        yield plane
    finally:
        stop_local_cluster(plane)
