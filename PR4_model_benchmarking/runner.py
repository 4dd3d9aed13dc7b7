"""One model under test: loaded once, then asked for timed turns, an accuracy pass and a server run.

:class:`ModelSession` does the work inside whatever process holds the model. :class:`WorkerProxy`
runs a ``ModelSession`` in its own spawned process and forwards method calls over a pipe, so that

- each model's memory is its own (the RSS of a process that only ever held that model), and
- the parent can still interleave models turn by turn (:func:`modelops.timing.run_turns`): it asks
  worker A for one turn, then B, then C. Timing happens inside the worker, so the pipe's cost is never timed.

Every runtime keeps its own default threading: nothing here changes OpenMP's wait policy or ONNX Runtime's
spinning. Workers ignore SIGINT: on Ctrl-C the parent writes what it has, then stops them by pid.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from typing import Any

import numpy as np

from PR4_model_benchmarking.memory import peak_rss_mb, reset_peak_rss, rss_mb, runtime_baseline_mb, weight_bytes

logger = logging.getLogger(__name__)

# Generous: a cold torch.compile of a big model on a shared 2-core machine can take minutes.
WORKER_REPLY_TIMEOUT_S = 1800.0


class ModelSession:
    """Load one artifact and serve measurement requests on it.

    Args:
        name: the model's label in reports.
        path: the artifact file.
        device: ``cpu`` or ``cuda``.
        threads: intra-op threads for torch and ONNX Runtime (default: all usable cores).
        trust_pickle: allow whole pickled modules.
        compile: force torch.compile on or off (default: the manifest's ``runtime.compile``).
        seed: seed of the random input batches.
    """

    def __init__(self, name: str, path: str, *, device: str = "cpu", threads: int | None = None,
                 trust_pickle: bool = False, compile: bool | None = None, seed: int = 0) -> None:
        self.name = name
        self.path = path
        self.device = device
        self.threads = threads
        self.trust_pickle = trust_pickle
        self.compile = compile
        self.seed = seed
        self.predictor: Any = None
        self.baseline_mb = 0.0
        self._batches: dict[int, Any] = {}

    # ------------------------------------------------------------------ setup
    def load(self) -> dict[str, Any]:
        """Load the artifact; return what it is (format, backend, shape, size, params, MACs, memory, load time)."""
        import torch

        from modelops.artifact import file_size_mb, load_artifact
        from modelops.cli import usable_cores

        torch.set_num_threads(self.threads or usable_cores())
        self.baseline_mb = runtime_baseline_mb()
        started = time.perf_counter()
        self.predictor = load_artifact(self.path, device=self.device, trust_pickle=self.trust_pickle,
                                       compile=self.compile, threads=self.threads or usable_cores())
        load_s = time.perf_counter() - started
        load_rss = rss_mb() - self.baseline_mb
        manifest = self.predictor.manifest
        params, macs = _params_and_macs(self.predictor)
        weights = weight_bytes(self.predictor)
        return {
            "format": manifest.format, "backend": self.predictor.backend, "arch": manifest.arch,
            "input_shape": list(manifest.input_shape), "num_classes": manifest.num_classes,
            "transform": (manifest.transform or {}).get("kind"), "size_mb": round(file_size_mb(self.path), 4),
            "params": params, "macs": macs, "manifest_accuracy_pct": manifest.metrics.get("accuracy"),
            "weights_mb": round(weights / 2**20, 3) if weights is not None else None,
            "load_rss_mb": round(load_rss, 1), "rss_baseline_mb": round(self.baseline_mb, 1),
            "load_s": round(load_s, 3), "pid": os.getpid(), "threads": torch.get_num_threads(),
        }

    def _batch(self, batch_size: int):
        import torch

        if batch_size not in self._batches:
            generator = torch.Generator().manual_seed(self.seed + batch_size)
            batch = torch.randn(batch_size, *self.predictor.input_shape, generator=generator)
            self.predictor.check_input(batch)
            if self.predictor.backend != "onnxruntime":
                batch = batch.to(self.device)
            self._batches[batch_size] = batch
        return self._batches[batch_size]

    # ------------------------------------------------------------------ measurements
    def begin_batch(self, batch_size: int) -> bool:
        """Make the timing input of ``batch_size`` and start its peak-memory window; False if the peak cannot reset."""
        self._batches.clear()  # only this batch's input stays resident
        reset = reset_peak_rss()
        self._batch(batch_size)
        return reset

    def turn(self, batch_size: int, untimed: int, timed: int) -> list[float]:
        """One turn at ``batch_size``: ``untimed`` calls, then ``timed`` timed calls; milliseconds each."""
        from modelops.timing import take_turn

        batch = self._batch(batch_size)
        return take_turn(lambda: self.predictor(batch), untimed, timed, device=self.device)

    def batch_memory(self) -> dict[str, Any]:
        """Peak RSS since :meth:`begin_batch` and its rise over the runtime-only baseline (CUDA peak on a GPU)."""
        peak = peak_rss_mb()
        out: dict[str, Any] = {"peak_rss_mb": round(peak, 1), "rss_rise_mb": round(peak - self.baseline_mb, 1)}
        if str(self.device).startswith("cuda"):
            import torch

            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out

    def predict_dataset(self, dataset: str, image_size: int, seed: int, data_dir: str, limit: int | None,
                        batch_size: int) -> dict[str, Any]:
        """Logits on the test split (first ``limit`` samples) for accuracy and top-1 agreement."""
        from modelops.data import load_dataset, make_loader
        from modelops.evaluate import predict_logits

        data = load_dataset(dataset, image_size=image_size, seed=seed, data_dir=data_dir)
        logits, targets = predict_logits(self.predictor, make_loader(data.test, batch_size, limit=limit))
        return {"logits": logits.numpy(), "targets": targets.numpy()}

    def serve(self, arrivals_s: list[float], max_seconds: float) -> dict[str, Any]:
        """Answer batch-1 queries arriving at ``arrivals_s`` (seconds from start) with one server."""
        from PR4_model_benchmarking.scenarios import run_server_queries

        batch = self._batch(1)
        return run_server_queries(lambda: self.predictor(batch), np.asarray(arrivals_s), max_seconds=max_seconds,
                                  device=self.device)

    def ping(self) -> int:
        return os.getpid()


def _params_and_macs(predictor: Any) -> tuple[int | None, int | None]:
    """Parameters and MACs per sample: the manifest's figures when it has them, else counted here."""
    metrics = predictor.manifest.metrics
    params, macs = metrics.get("params"), metrics.get("macs")
    module = predictor.module
    if params is None and module is not None:
        try:
            params = sum(int(np.prod(t.shape)) for t in module.state_dict().values() if hasattr(t, "shape"))
        except Exception:  # scripted/exported modules may hold packed params without a shape
            params = None
    if params is None and predictor.backend in ("onnxruntime", "openvino"):  # both run an ONNX file
        try:
            import onnx

            graph = onnx.load(str(predictor.path)).graph
            params = sum(int(np.prod(init.dims)) for init in graph.initializer)
        except Exception:  # a model too odd for onnx.load still runs in ORT; the count is optional
            params = None
    if macs is None and module is not None and predictor.backend == "torch":
        try:
            from modelops.models import count_macs

            macs = count_macs(module, predictor.input_shape)
        except Exception:  # flop counting is best effort; the row shows blank
            macs = None
    return (int(params) if params is not None else None), (int(macs) if macs is not None else None)


# ---------------------------------------------------------------------- worker process


def _worker_main(conn: Any, kwargs: dict[str, Any]) -> None:
    """Entry point of a spawned worker: build a session, then answer (method, args, kwargs) messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    session = ModelSession(**kwargs)
    parent = os.getppid()
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:  # the parent died without closing us: leave, do not linger
                    return
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            conn.close()
            return
        method, args, call_kwargs = message
        try:
            conn.send(("ok", getattr(session, method)(*args, **call_kwargs)))
        except BaseException as exc:  # report every failure to the parent instead of dying silently
            first = str(exc).splitlines()[0] if str(exc) else ""
            conn.send(("error", (type(exc).__name__, first, traceback.format_exc(limit=8),
                                 _is_usage_error(exc))))


def _is_usage_error(exc: BaseException) -> bool:
    from modelops.errors import UsageError

    return isinstance(exc, UsageError)


class WorkerError(RuntimeError):
    """A call that failed inside a worker; ``usage`` tells bad input (exit 2) from a failure."""

    def __init__(self, message: str, *, usage: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.usage = usage
        self.detail = detail


class WorkerProxy:
    """A :class:`ModelSession` in its own spawned process; call its methods as if it were local."""

    def __init__(self, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.name = kwargs["name"]
        self.process = ctx.Process(target=_worker_main, args=(child, kwargs), daemon=True,
                                   name=f"bench-{self.name}")
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def call(self, method: str, *args: Any, timeout: float = WORKER_REPLY_TIMEOUT_S, **kwargs: Any) -> Any:
        self.send(method, *args, **kwargs)
        return self.receive(timeout=timeout)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._conn.send((method, args, kwargs))
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"worker for {self.name!r} is gone ({exc})") from exc

    def receive(self, timeout: float = WORKER_REPLY_TIMEOUT_S) -> Any:
        if not self._conn.poll(timeout):
            raise WorkerError(f"worker for {self.name!r} did not answer within {timeout:.0f} s")
        try:
            status, payload = self._conn.recv()
        except EOFError as exc:
            code = self.process.exitcode
            raise WorkerError(f"worker for {self.name!r} died (exit code {code}); out of memory?") from exc
        if status == "error":
            kind, message, detail, usage = payload
            raise WorkerError(f"{kind}: {message}", usage=usage, detail=detail)
        return payload

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; stop it by its pid if it does not."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        self._conn.close()


class LocalProxy:
    """The same interface as :class:`WorkerProxy` for ``--isolation none`` (all models in this process)."""

    def __init__(self, **kwargs: Any) -> None:
        self.name = kwargs["name"]
        self.session = ModelSession(**kwargs)
        self.pid = os.getpid()
        self._pending: Any = None

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self.session, method)(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkerError(f"{type(exc).__name__}: {first}", usage=_is_usage_error(exc),
                              detail=traceback.format_exc(limit=8)) from exc

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._pending = ("ok", self.call(method, *args, **kwargs))
        except WorkerError as exc:
            self._pending = ("error", exc)

    def receive(self, timeout: float | None = None) -> Any:
        status, payload = self._pending
        self._pending = None
        if status == "error":
            raise payload
        return payload

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def close(self, timeout: float = 0.0) -> None:
        self.session.predictor = None


def start_session(isolation: str, **kwargs: Any) -> WorkerProxy | LocalProxy:
    """A session for one model: in its own process (``isolation='process'``) or in this one (``'none'``)."""
    if isolation == "process":
        return WorkerProxy(**kwargs)
    return LocalProxy(**kwargs)

