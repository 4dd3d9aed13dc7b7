"""MLPerf LoadGen over the project's predictor: a query sample library, a system under test, one test run.

LoadGen (PyPI ``mlcommons-loadgen``, module ``mlperf_loadgen``) decides when queries are issued, how many and
for how long, measures every latency, and says whether a run is VALID: minimum duration and query count met,
early stopping's confidence that the percentile is under its bound, and in the server scenario the latency
bound itself. This module only answers LoadGen's queries:

- :class:`SampleLibrary` (the QSL): the benchmark's inputs, in memory, with their labels where a dataset gave
  them.
- :class:`PredictorSUT` (the SUT): one thread that takes LoadGen's queries in the order they are issued and
  runs the predictor on them, at most ``max_batch`` samples per call; the predictor keeps the threads the other
  figures use.
- :func:`run_test`: one LoadGen test with :class:`LoadGenSettings`; LoadGen writes its logs
  (``mlperf_log_summary.txt``, ``mlperf_log_detail.txt``, ``mlperf_log_accuracy.json``) into a folder and the
  detail log is read back with LoadGen's own keys (:func:`read_detail_log`).
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUMMARY_LOG = "mlperf_log_summary.txt"
DETAIL_LOG = "mlperf_log_detail.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
# LoadGen's names of the scenarios, by the names the project's flags use.
LOADGEN_SCENARIOS = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "offline": "Offline",
                     "server": "Server"}
MODES = {"performance": "PerformanceOnly", "accuracy": "AccuracyOnly"}
_LOG_PREFIX = ":::MLLOG "


@dataclass(frozen=True)
class LoadGenSettings:
    """The LoadGen settings a run asks for; ``None`` leaves LoadGen's own default.

    Args:
        scenario: one of :data:`LOADGEN_SCENARIOS`.
        mode: ``performance`` (PerformanceOnly) or ``accuracy`` (AccuracyOnly: every sample once, outputs logged).
        min_duration_ms: the run lasts at least this long (LoadGen: 10 000).
        min_query_count: and issues at least this many queries (LoadGen: 100).
        max_duration_ms: stop issuing after this long (LoadGen: 0, no limit).
        server_target_qps: the server scenario's Poisson arrival rate.
        server_target_latency_ms: the server scenario's bound on the 99th percentile latency.
        offline_expected_qps: what the offline run expects to sustain; sizes its one query.
        single_stream_expected_latency_ms: what single-stream expects per query; sizes the run.
        multi_stream_samples_per_query: samples in each multi-stream query (LoadGen: 8).
        multi_stream_expected_latency_ms: what multi-stream expects per query; sizes the run.
        performance_sample_count: samples LoadGen keeps loaded in a performance run (default: all of the QSL).
    """

    scenario: str
    mode: str = "performance"
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    max_duration_ms: int | None = None
    server_target_qps: float | None = None
    server_target_latency_ms: float | None = None
    offline_expected_qps: float | None = None
    single_stream_expected_latency_ms: float | None = None
    multi_stream_samples_per_query: int | None = None
    multi_stream_expected_latency_ms: float | None = None
    performance_sample_count: int | None = None

    def __post_init__(self) -> None:
        if self.scenario not in LOADGEN_SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; one of {', '.join(LOADGEN_SCENARIOS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; one of {', '.join(MODES)}")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def test_settings(self) -> Any:
        """LoadGen's ``TestSettings`` with these values over its defaults."""
        import mlperf_loadgen as lg

        settings = lg.TestSettings()
        settings.scenario = getattr(lg.TestScenario, LOADGEN_SCENARIOS[self.scenario])
        settings.mode = getattr(lg.TestMode, MODES[self.mode])
        for field in ("min_duration_ms", "min_query_count", "max_duration_ms", "server_target_qps",
                      "offline_expected_qps", "multi_stream_samples_per_query"):
            value = getattr(self, field)
            if value is not None:
                setattr(settings, field, value)
        nanoseconds = {"server_target_latency_ns": self.server_target_latency_ms,
                       "single_stream_expected_latency_ns": self.single_stream_expected_latency_ms,
                       "multi_stream_expected_latency_ns": self.multi_stream_expected_latency_ms}
        for field, ms in nanoseconds.items():
            if ms is not None:
                setattr(settings, field, int(ms * 1e6))
        return settings


class SampleLibrary:
    """The query sample library: every input already in memory, so loading a sample set costs nothing.

    Args:
        inputs: one input per sample, stacked (N, C, H, W), on the device the predictor takes.
        labels: the samples' classes where a dataset gave them (accuracy mode scores against them).
    """

    def __init__(self, inputs: torch.Tensor, labels: np.ndarray | None = None) -> None:
        if len(inputs) == 0:
            raise ValueError("a query sample library needs at least one sample")
        self.inputs = inputs
        self.labels = labels
        self.loaded: set[int] = set()

    def __len__(self) -> int:
        return len(self.inputs)

    def load(self, indices: list[int]) -> None:
        self.loaded.update(indices)

    def unload(self, indices: list[int]) -> None:
        self.loaded.difference_update(indices)

    def batch(self, indices: list[int]) -> torch.Tensor:
        if len(indices) == 1:  # a view, no copy: single-stream and server queries are one sample each
            return self.inputs[indices[0]:indices[0] + 1]
        return self.inputs[torch.as_tensor(indices)]


class PredictorSUT:
    """The system under test: one thread runs the predictor on LoadGen's queries, in the order issued.

    LoadGen's issue callback only queues the query and returns, so LoadGen's own thread keeps its schedule;
    a query that arrives while the predictor is busy waits, and LoadGen counts the wait in its latency.

    Args:
        predictor: called on a batch of inputs; returns one row of class scores per input.
        library: where the inputs are.
        max_batch: samples per predictor call at most (a longer query is split).
        keep_outputs: send each sample's top-1 class back to LoadGen (accuracy mode logs it).
        device: synchronised before a query is reported complete (``cuda``); CPU needs nothing.
    """

    def __init__(self, predictor: Any, library: SampleLibrary, *, max_batch: int = 1, keep_outputs: bool = False,
                 device: str | None = None) -> None:
        self.predictor = predictor
        self.library = library
        self.max_batch = max(1, max_batch)
        self.keep_outputs = keep_outputs
        self.device = device
        self.error: BaseException | None = None
        self.calls = 0
        self._queue: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="loadgen-sut", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def issue(self, samples: list[Any]) -> None:
        self._queue.put(list(samples))

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back, every query is already queued."""

    def _serve(self) -> None:
        import mlperf_loadgen as lg

        from modelops.timing import sync

        while (query := self._queue.get()) is not None:
            for start in range(0, len(query), self.max_batch):
                chunk = query[start:start + self.max_batch]
                classes = None
                if self.error is None:
                    try:
                        outputs = self.predictor(self.library.batch([s.index for s in chunk]))
                        sync(self.device)
                        self.calls += 1
                        if self.keep_outputs:
                            classes = np.ascontiguousarray(torch.as_tensor(outputs).argmax(1).cpu().numpy(),
                                                           dtype="<i4")
                    except BaseException as exc:  # LoadGen would wait forever for the query: answer, then report
                        self.error = exc
                # a failed model still completes its samples (empty responses) so that LoadGen ends its run
                if classes is None:
                    responses = [lg.QuerySampleResponse(s.id, 0, 0) for s in chunk]
                else:
                    responses = [lg.QuerySampleResponse(s.id, classes[i:].ctypes.data, 4) for i, s in enumerate(chunk)]
                lg.QuerySamplesComplete(responses)  # LoadGen copies the response bytes before this returns


def run_test(predictor: Any, library: SampleLibrary, settings: LoadGenSettings, log_dir: str | Path, *,
             max_batch: int = 1, device: str | None = None) -> dict[str, Any]:
    """One LoadGen test of ``predictor`` over ``library``; its figures as LoadGen's detail log names them.

    Returns ``{"detail": {key: value}, "errors": [...], "warnings": [...], "log_dir", "summary_log",
    "detail_log", "settings", "sut_calls"}`` and, in accuracy mode with labels, ``"accuracy"``.
    Raises RuntimeError if the predictor failed during the run.
    """
    import mlperf_loadgen as lg

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    sut = PredictorSUT(predictor, library, max_batch=max_batch, keep_outputs=settings.mode == "accuracy",
                       device=device)
    sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
    qsl_handle = lg.ConstructQSL(len(library), min(settings.performance_sample_count or len(library), len(library)),
                                 library.load, library.unload)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False  # the trace is large and the detail log has every figure
    try:
        sut.start()
        # LoadGen reads compliance-audit overrides from an 'audit.config' in the working directory when one is
        # there; a benchmark run must not pick up whatever file happens to lie in the user's folder.
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings.test_settings(), log,
                                    str(log_dir / "no-audit.config"))
    finally:
        sut.stop()
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)
    if sut.error is not None:
        raise RuntimeError(f"the model failed during the LoadGen run: {type(sut.error).__name__}: {sut.error}")
    detail, errors, warnings = read_detail_log(log_dir / DETAIL_LOG)
    out: dict[str, Any] = {"detail": detail, "errors": errors, "warnings": warnings, "log_dir": str(log_dir),
                           "summary_log": str(log_dir / SUMMARY_LOG), "detail_log": str(log_dir / DETAIL_LOG),
                           "settings": settings.as_dict(), "sut_calls": sut.calls}
    if settings.mode == "accuracy" and library.labels is not None:
        out["accuracy"] = score_accuracy_log(log_dir / ACCURACY_LOG, library.labels)
        out["accuracy_log"] = str(log_dir / ACCURACY_LOG)
    return out


def read_detail_log(path: str | Path) -> tuple[dict[str, Any], list[str], list[str]]:
    """LoadGen's detail log as ``({key: last value}, error messages, warning messages)``."""
    detail: dict[str, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith(_LOG_PREFIX):
            continue
        entry = json.loads(line[len(_LOG_PREFIX):])
        detail[entry["key"]] = entry.get("value")
        meta = entry.get("metadata") or {}
        if meta.get("is_error"):
            errors.append(str(entry.get("value")))
        elif meta.get("is_warning"):
            warnings.append(str(entry.get("value")))
    return detail, errors, warnings


def score_accuracy_log(path: str | Path, labels: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy from LoadGen's accuracy log: each entry's ``data`` is the hex of one int32 class."""
    entries = json.loads(Path(path).read_text() or "[]")
    seen: dict[int, int] = {}
    for entry in entries:
        seen[int(entry["qsl_idx"])] = int(np.frombuffer(bytes.fromhex(entry["data"]), dtype="<i4")[0])
    correct = sum(int(labels[i] == predicted) for i, predicted in seen.items())
    return {"top1_pct": round(100.0 * correct / len(seen), 3) if seen else None, "accuracy_samples": len(seen)}
