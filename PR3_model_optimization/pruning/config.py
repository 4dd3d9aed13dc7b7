"""What one pruning run's phases read: a typed config ``model_pruning.py`` builds once from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelops.load_options import LoadOptions
from modelops.training import TrainingConfig


@dataclass(frozen=True)
class PruningConfig:
    """The settings of :mod:`.run`, :mod:`.latency` and :mod:`.fine_tune`, named after ``model_pruning.py``'s flags.

    Args:
        pruning_method: ``structured``, ``global`` or ``layerwise`` (default: structured).
        amount: fraction to prune: channels for structured, weights otherwise (default: 0.3).
        importance: structured channel ranking, ``l1``, ``l2``, ``bn`` or ``taylor`` (default: l1).
        steps: prune in this many equal steps (default: 1).
        round_to: structured channel counts stay multiples of this (default: 8).
        memory_format: ``auto``, ``contiguous`` or ``channels_last`` (default: auto).
        target_speedup, target_latency_ms: prune until the measured speed-up or latency meets this; at most one is
            set (default: None, prune to ``amount``).
        amount_step, max_amount: channel fraction per increment and the most pruned, towards a target
            (default: 0.05, 0.8).
        latency_batch_size, latency_rounds: batch and interleaved rounds of each latency comparison (default: 1, 10).
        threads: intra-op threads of the timing processes (default: None, all usable cores).
        fine_tune: train after pruning (default: False).
        distill_from: teacher artifact while fine-tuning (default: None, labels only).
        kd_alpha, kd_temperature: the teacher term's weight and softmax temperature (default: 0.5, 4.0).
        eval_limit: score on only the first N test samples (default: None, all).
        batch_size, seed, workers: the fine-tuning loader's batch, shuffle seed and worker processes
            (default: 64, 0, 0).
        output_dir: fine-tuning checkpoints and metrics go under it (default: runs/prune).
        training: the fine-tuning settings (default: :class:`~modelops.training.TrainingConfig`'s).
        load: how to load the ``distill_from`` teacher (default: :class:`~modelops.load_options.LoadOptions`'s).
    """

    pruning_method: str = "structured"
    amount: float = 0.3
    importance: str = "l1"
    steps: int = 1
    round_to: int = 8
    memory_format: str = "auto"
    target_speedup: float | None = None
    target_latency_ms: float | None = None
    amount_step: float = 0.05
    max_amount: float = 0.8
    latency_batch_size: int = 1
    latency_rounds: int = 10
    threads: int | None = None
    fine_tune: bool = False
    distill_from: str | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    eval_limit: int | None = None
    batch_size: int = 64
    seed: int = 0
    workers: int = 0
    output_dir: str = "runs/prune"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    load: LoadOptions = field(default_factory=LoadOptions)

    @property
    def targeted(self) -> bool:
        """Pruning towards a measured latency target rather than to ``amount``."""
        return self.target_speedup is not None or self.target_latency_ms is not None

    def target_met(self, row: dict) -> bool:
        """Whether a step's ``speedup_x`` / ``latency_ms_p50`` meets the target."""
        return (self.target_speedup is not None and row["speedup_x"] >= self.target_speedup) or (
            self.target_latency_ms is not None and row["latency_ms_p50"] <= self.target_latency_ms)
