"""The kubelet for the worker, here: keep as many local PR2 worker processes running as the Deployment asks for.

The local control plane has no scheduler and no kubelet, so a Deployment's ``spec.replicas`` changes while no pod
runs. :class:`WorkerReconciler` closes that loop for the worker: once a second it reads the worker Deployment's
``spec.replicas`` from the API server and starts or stops worker processes of a running local stack
(``PR2_async_inference/local_stack.py``) until their count matches, up to a cap the caller gives. Each worker
joins the requests topic's consumer group, so what the HPA decides changes the consumers that drain the queue.

Like a ReplicaSet scaling down, it stops a worker that is not ready yet before a ready one, and the newest before
older ones. A stopped worker gets SIGTERM (it finishes its batch, commits and leaves the group). A worker that
exits by itself is replaced on the next pass, as a kubelet restarts a container. Every change is logged and kept
in :attr:`WorkerReconciler.events` with its time.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR2_async_inference.local_stack import Stack, start_worker
from PR2_async_inference.processes import Proc, stop_process

logger = logging.getLogger(__name__)
WORKER = "inference-worker"


@functools.lru_cache(maxsize=4)
def _tls_context(ca_cert: str) -> ssl.SSLContext:
    """One context per cluster CA: loading the CA file costs more than the GET it secures."""
    return ssl.create_default_context(cafile=ca_cert)


def spec_replicas(plane: ControlPlane, namespace: str, name: str = WORKER, timeout_s: float = 5) -> int | None:
    """``spec.replicas`` of a Deployment, read with one HTTPS GET (None when it does not exist).

    A GET rather than ``kubectl``: this runs every second beside the load it scales, and a kubectl process costs
    the shared cores far more than a request."""
    context = _tls_context(str(plane.pki.ca_cert))
    url = f"{plane.server}/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {plane.pki.token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return int(json.loads(response.read())["spec"].get("replicas", 1))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def group_members(bootstrap: str, group: str) -> int | None:
    """Members of the consumer group once it is stable (0 when empty), None while it rebalances."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="reconciler-group", request_timeout_ms=10000)
    try:
        described = admin.describe_groups([group])[group]
    finally:
        admin.close()
    state = described["group_state"]
    return len(described["members"]) if state == "Stable" else 0 if state in ("Empty", "Dead") else None


def worker_ready(worker: Proc, timeout_s: float = 0.5) -> bool:
    """The worker's ``/readyz`` answers 200: its models are loaded and it polls the queue."""
    try:
        with urllib.request.urlopen(f"{worker.info['metrics_url']}/readyz", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ReconcileEvent:
    t_s: float  # seconds since the reconciler's origin
    replicas: int | None  # the Deployment's spec.replicas read
    live_before: int
    action: str  # "start worker3", "stop worker2", "replace worker1 (exited 1)"


class WorkerReconciler:
    """A thread that keeps ``stack``'s worker processes at the worker Deployment's ``spec.replicas``.

    Args:
        plane: the running control plane.
        namespace: where the worker Deployment lives.
        stack: the running local stack whose workers it starts and stops (``stack.workers`` is kept in step, so
            ``stop_stack`` stops what is left).
        cap: the most workers it runs, whatever the Deployment says (the cores are shared).
        name: the Deployment (default: inference-worker).
        period_s: seconds between passes (default: 1).
        origin: the ``time.monotonic()`` its event times count from (default: when it is constructed).
    """

    def __init__(self, plane: ControlPlane, namespace: str, stack: Stack, *, cap: int, name: str = WORKER,
                 period_s: float = 1.0, origin: float | None = None):
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.plane, self.namespace, self.stack = plane, namespace, stack
        self.cap, self.name, self.period_s = cap, name, period_s
        self.origin = time.monotonic() if origin is None else origin
        self.events: list[ReconcileEvent] = []
        self.error: BaseException | None = None
        self._workers: list[Proc] = []  # the ones it started and has not stopped, oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0

    # -- what the caller reads ------------------------------------------------------------------------------
    def live(self) -> int:
        """Worker processes running now (started and not exited)."""
        with self._lock:
            return sum(worker.alive() for worker in self._workers)

    def ready(self) -> int:
        """Workers whose /readyz answers (models loaded, polling)."""
        with self._lock:
            workers = list(self._workers)
        return sum(worker.alive() and worker_ready(worker) for worker in workers)

    def event_rows(self) -> list[dict[str, Any]]:
        return [asdict(event) for event in self.events]

    # -- one pass ---------------------------------------------------------------------------------------------
    def reconcile_once(self) -> int:
        """Read the Deployment's replicas and start or stop workers to match (at most ``cap``); returns the
        target it worked towards."""
        replicas = spec_replicas(self.plane, self.namespace, self.name)
        target = min(self.cap, replicas or 0)
        self._replace_exited(replicas)
        while (live := self.live()) < target and not self._stop.is_set():
            self._start_one(replicas, live)
        while (live := self.live()) > target:
            self._stop_one(replicas, live)
        return target

    def _record(self, replicas: int | None, live_before: int, action: str) -> None:
        event = ReconcileEvent(round(time.monotonic() - self.origin, 1), replicas, live_before, action)
        self.events.append(event)
        logger.info("t=%.1fs replicas=%s live=%d: %s", event.t_s, replicas, live_before, action)

    def _replace_exited(self, replicas: int | None) -> None:
        with self._lock:
            exited = [worker for worker in self._workers if not worker.alive()]
        for worker in exited:
            self._forget(worker)
            self._record(replicas, self.live() + 1, f"{worker.name} exited ({worker.popen.returncode}), see "
                         f"{worker.log}")

    def _start_one(self, replicas: int | None, live: int) -> None:
        name = f"worker{self._started}"
        self._started += 1
        # Not waiting for /readyz: a pod's container is running before it is ready, and the next pass must be
        # free to stop it again if the replicas drop meanwhile.
        worker = start_worker(self.stack.log_dir, self.stack.env, name=name, wait=False)
        with self._lock:
            self._workers.append(worker)
            self.stack.workers.append(worker)
        self._record(replicas, live, f"start {name} (pid {worker.pid})")

    def _stop_one(self, replicas: int | None, live: int) -> None:
        with self._lock:
            candidates = [worker for worker in self._workers if worker.alive()]
        # As a ReplicaSet scales down: not-ready pods first, then the newest.
        not_ready = [worker for worker in candidates if not worker_ready(worker)]
        victim = (not_ready or candidates)[-1]
        self._record(replicas, live, f"stop {victim.name} (pid {victim.pid})")
        # Forgotten first: from here on it is no longer one of the workers (live() and stack.workers agree while
        # it finishes its batch and leaves the group), and the stop below ends it by pid.
        self._forget(victim)
        stop_process(victim)

    def _forget(self, worker: Proc) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            if worker in self.stack.workers:
                self.stack.workers.remove(worker)

    # -- the thread -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                self.reconcile_once()
            except (urllib.error.URLError, OSError, ValueError) as exc:  # the API server busy: try next pass
                logger.warning("reconcile pass failed: %s", exc)
            except BaseException as exc:  # kept for the caller, which checks it
                self.error = exc
                logger.exception("reconciler stopped")
                return
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - tick)))

    def start(self) -> WorkerReconciler:
        self._thread = threading.Thread(target=self._loop, name="worker-reconciler", daemon=True)
        self._thread.start()
        return self

    def stop(self, stop_workers: bool = True) -> None:
        """End the thread; with ``stop_workers``, stop every worker it started (newest first), by pid."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if stop_workers:
            with self._lock:
                workers = list(reversed(self._workers))
            for worker in workers:
                stop_process(worker)
                self._forget(worker)

    def check(self) -> None:
        """Raise what stopped the thread, if anything did."""
        if self.error is not None:
            raise RuntimeError(f"the worker reconciler failed: {self.error}") from self.error

    def __enter__(self) -> WorkerReconciler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
