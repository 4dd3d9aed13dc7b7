"""What one benchmark run was asked for, as one typed value: the script's flags resolved once.

``benchmark_models.py`` builds a :class:`BenchmarkSettings` from its flags (``--quick`` defaults filled, the dataset
taken from a manifest where no ``--dataset`` names one) and hands it to :class:`~PR4_model_benchmarking.measure.
Benchmark`; nothing below the script reads or changes the parsed flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelops.load_options import LoadOptions
from modelops.timing import TimingPolicy


@dataclass(frozen=True)
class BenchmarkSettings:
    """One run's settings; each field is the flag of the same name (``--batch-sizes`` parsed, units in the name).

    Args:
        load: how every model is loaded (its ``threads`` already resolved to a number).
        isolation: ``process`` (each model in its own worker) or ``none``.
        seed: seed of the random timing inputs.
        policy: warm-up, calls per turn, untimed calls per turn, pause before a turn.
        batch_sizes: the timed batch sizes, in order.
        scenarios: the LoadGen scenarios to run (empty: none).
        iters: timed calls per model and batch size (the minimum with ``min_time``).
        min_time: seconds each model runs per batch size, or None for ``iters`` calls.
        max_iters: cap on timed calls with ``min_time``.
        dataset: the dataset of the accuracy pass and LoadGen's samples, or None for a speed-only run.
        data_dir: cache of downloadable datasets.
        batch_size: batch size of the accuracy pass.
        accuracy_samples: test samples of the accuracy pass (0: none).
        accuracy_tolerance: top-1 points a model may lose and still count as "within" the first.
        output_dir: where the reports go.
        show_progress: progress bars on stderr.
    """

    load: LoadOptions
    isolation: str
    seed: int
    policy: TimingPolicy
    batch_sizes: tuple[int, ...]
    scenarios: tuple[str, ...]
    iters: int
    min_time: float | None
    max_iters: int | None
    dataset: str | None
    data_dir: str
    batch_size: int
    accuracy_samples: int
    accuracy_tolerance: float
    output_dir: str
    show_progress: bool
    loadgen: LoadGenSettings


@dataclass(frozen=True)
class LoadGenSettings:
    """The LoadGen phase's flags (see ``benchmark_models.py --help``, group "MLPerf LoadGen")."""

    mode: str
    qsl_samples: int
    accuracy_samples: int
    target_qps: float | None
    latency_bound_ms: float | None
    min_duration_ms: int | None
    min_query_count: int | None
    max_duration_ms: int | None
    offline_batch_size: int | None
    multi_stream_samples: int | None
    server_search_runs: int
    server_search_seconds: float
