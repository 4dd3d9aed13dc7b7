"""What a quantization run's trials read besides the configuration they try: a typed value ``model_quantization.py``
builds once from its flags."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialSettings:
    """The settings of :func:`~.search.plan_trials` and :func:`~.run.run_trials`, named after
    ``model_quantization.py``'s flags.

    Args:
        backend: the backend asked for; None or ``auto`` tries every backend that makes the method (default: None).
        max_trials: try at most this many configurations (default: None, all).
        search_time_s: start no new search trial after this many seconds (default: None, no limit).
        save_path: where the kept model goes (default: None, named after the model and the winner's format).
        threads: intra-op threads of the trials and their timing processes (default: None, all usable cores).
        trust_pickle: timing processes may load whole pickled modules (default: False).
        seed: seed of the calibration and QAT batches (default: 0).
        batch_size: QAT batch size (default: 64).
        calibration_batch_size: calibration batch size (default: 32).
        qat_epochs, qat_lr: QAT fine-tuning epochs (may be fractional) and SGD learning rate (default: 1.0, 1e-3).
        latency_batch_size, latency_rounds: batch and interleaved rounds of each trial's timing (default: 16, 10).
        aoti: write an AOTInductor package beside a published pt2e model where it runs as fast (default: True).
    """

    backend: str | None = None
    max_trials: int | None = None
    search_time_s: float | None = None
    save_path: str | None = None
    threads: int | None = None
    trust_pickle: bool = False
    seed: int = 0
    batch_size: int = 64
    calibration_batch_size: int = 32
    qat_epochs: float = 1.0
    qat_lr: float = 1e-3
    latency_batch_size: int = 16
    latency_rounds: int = 10
    aoti: bool = True
