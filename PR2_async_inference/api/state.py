"""What the API holds between requests: the results cache, the registry's manifests (:class:`ServiceState`) and
the request producer (:class:`RequestProducer`), each handed to the routes by its own dependency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from modelops.artifact import Manifest, manifest_path
from modelops.errors import UsageError
from PR2_async_inference.messaging.messages import FINAL_STATES, STATUS_RANK, RequestMessage, StatusMessage
from PR2_async_inference.messaging.producer import Producer, as_asyncio, make_producer, send_request, send_status
from PR2_async_inference.messaging.results_reader import ResultsReader
from PR2_async_inference.registry import Registry, model_manifest
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]

#: How long a model's manifest is trusted before its file is looked at again: a request then costs no
#: file-system calls, and a replaced artifact is still seen within a second.
MANIFEST_RECHECK_S = 1.0


@dataclass
class CachedManifest:
    path: Path
    manifest: Manifest
    mtimes: tuple[float, float | None]  # the artifact's and its manifest's (None: none, the manifest was derived)
    checked_at: float  # time.monotonic() of the last look at the files


def file_mtimes(path: Path) -> tuple[float, float | None]:
    """(the artifact's mtime, its manifest's or None): a change to either, or a manifest appearing, is seen."""
    try:
        manifest_mtime: float | None = manifest_path(path).stat().st_mtime
    except FileNotFoundError:
        manifest_mtime = None
    return path.stat().st_mtime, manifest_mtime


class ResultStore:
    """Bounded LRU of request states, fed by the results topic (and by this replica's own accepts).

    A final state is never replaced (the first final state wins, so a redelivered request cannot flip a
    result), and a state never goes back (``running`` after ``succeeded`` is ignored). The states not yet final
    give the backlog (how many, and the oldest one's age) that drives backpressure without asking the broker.
    """

    def __init__(self, size: int, idempotency_size: int) -> None:
        self.size = size
        self.idempotency_size = idempotency_size
        self.statuses: OrderedDict[str, StatusMessage] = OrderedDict()
        self.idempotency: OrderedDict[str, str] = OrderedDict()
        self.pending: OrderedDict[str, float] = OrderedDict()  # not final yet -> created_at
        # Long-polling GETs waiting for a final state. apply() runs on the results-reader thread, so each
        # waiter is woken through its own event loop.
        self.waiters: dict[str, list[Waiter]] = {}
        self.lock = threading.Lock()

    def apply(self, new: StatusMessage) -> None:
        with self.lock:
            woken = self._store(new)
        for loop, event in woken:
            with contextlib.suppress(RuntimeError):  # that request's loop is already closed
                loop.call_soon_threadsafe(event.set)

    def _store(self, new: StatusMessage) -> list[Waiter]:
        """Apply ``new`` (lock held); return the waiters to wake."""
        old = self.statuses.get(new.request_id)
        if old is not None and (old.status in FINAL_STATES or STATUS_RANK[new.status] < STATUS_RANK[old.status]):
            return []
        if old is not None and new.idempotency_key is None:
            new.idempotency_key = old.idempotency_key
        self.statuses[new.request_id] = new
        self.statuses.move_to_end(new.request_id)
        while len(self.statuses) > self.size:
            evicted, _ = self.statuses.popitem(last=False)
            self.pending.pop(evicted, None)
        if new.status in FINAL_STATES:
            self.pending.pop(new.request_id, None)
        elif new.request_id not in self.pending:
            self.pending[new.request_id] = new.created_at
        if new.idempotency_key:
            self.idempotency[new.idempotency_key] = new.request_id
            while len(self.idempotency) > self.idempotency_size:
                self.idempotency.popitem(last=False)
        return self.waiters.pop(new.request_id, []) if new.status in FINAL_STATES else []

    def get(self, request_id: str) -> StatusMessage | None:
        with self.lock:
            return self.statuses.get(request_id)

    async def wait_final(self, request_id: str, timeout_s: float) -> StatusMessage | None:
        """The request's state once it is final, or its state after ``timeout_s`` (None if unknown)."""
        event = asyncio.Event()
        with self.lock:
            found = self.statuses.get(request_id)
            if found is None or found.status in FINAL_STATES or timeout_s <= 0:
                return found
            self.waiters.setdefault(request_id, []).append((asyncio.get_running_loop(), event))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            with self.lock:
                waiting = [w for w in self.waiters.get(request_id, []) if w[1] is not event]
                if waiting:
                    self.waiters[request_id] = waiting
                else:
                    self.waiters.pop(request_id, None)
        return self.get(request_id)

    def by_idempotency_key(self, key: str) -> str | None:
        with self.lock:
            return self.idempotency.get(key)

    def backlog(self, now: float | None = None) -> tuple[int, float]:
        """(requests accepted but not final, age in seconds of the oldest of them)."""
        with self.lock:
            if not self.pending:
                return 0, 0.0
            oldest = next(iter(self.pending.values()))
            return len(self.pending), max(0.0, (now or time.time()) - oldest)


class RequestProducer:
    """Publishes an accepted request: its ``queued`` state (so every replica knows it) and the request itself,
    both acknowledged by the broker (acks=all) before the API answers 202."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.settings, client_id="inference-api")
            return self._producer

    async def submit(self, message: RequestMessage, queued: StatusMessage) -> None:
        # Creating the producer blocks on the broker, so only the first call pays a thread hop.
        producer = self._producer or await run_in_threadpool(self.producer)
        loop = asyncio.get_running_loop()
        futures = [  # the request first: it is what a worker waits for
            send_request(producer, self.settings, message),
            send_status(producer, self.settings, queued),
        ]
        await asyncio.wait_for(asyncio.gather(*(as_asyncio(f, loop) for f in futures)), timeout=30)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5)


class ModelUnavailable(Exception):
    """A registry model whose artifact or manifest is missing; the message names the file, not its server path."""


class ServiceState:
    """What the routes read and update besides the producer: settings, registry and its manifests, results cache,
    results reader. Built once per app in its lifespan."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.store = ResultStore(settings.result_cache_size, settings.idempotency_cache_size)
        self.reader = ResultsReader(settings, self.store.apply)
        self._manifests: dict[str, CachedManifest] = {}
        self.idempotency_locks: dict[str, asyncio.Lock] = {}

    def warm_manifests(self) -> None:
        """Read (or derive) every registry model's manifest once, at start-up: a model saved without a manifest
        is loaded to derive one, which must not happen on a request's event loop. A missing model stays
        unavailable until its file appears."""
        for name in self.registry.models:
            with contextlib.suppress(ModelUnavailable):
                self.manifest(name)

    def manifest(self, name: str) -> tuple[Path, Manifest]:
        """The model's artifact path + manifest, re-read when the artifact or its manifest changes; the files are
        looked at again at most every :data:`MANIFEST_RECHECK_S` seconds. No model is loaded when the artifact has
        a manifest beside it; one without (e.g. a bare state_dict) gets the manifest the worker's loader works out,
        built once per version of the file.

        Raises:
            ModelUnavailable: the artifact is missing or has no manifest the loader can work out (the full reason
                is logged).
        """
        cached = self._manifests.get(name)
        now = time.monotonic()
        if cached is not None and now - cached.checked_at < MANIFEST_RECHECK_S:
            return cached.path, cached.manifest
        spec = self.registry.models[name]
        path = spec.resolve()
        if cached is not None and path == cached.path:
            with contextlib.suppress(OSError):
                if file_mtimes(path) == cached.mtimes:
                    cached.checked_at = now
                    return cached.path, cached.manifest
        try:
            before = file_mtimes(path) if path is not None else None  # taken first: a change while reading is seen
            served, manifest = model_manifest(spec)
            mtimes = before if before is not None and served == path else file_mtimes(served)
        except (OSError, UsageError) as exc:  # UsageError: an ArtifactError naming what the file lacks
            self._manifests.pop(name, None)
            logger.warning("model %r is unavailable: %s", name, exc)
            raise ModelUnavailable(f"model {name!r} is unavailable on this server: {spec.public_reason(str(exc))}") \
                from exc
        self._manifests[name] = CachedManifest(served, manifest, mtimes, now)
        return served, manifest
