"""Latency-driven pruning: time the pruned model against the original (and in channels_last), and prune
structurally in small increments until the MEASURED latency meets a target, rather than trusting a MAC count.

Every comparison is the project's one timing method: each variant saved to a temporary folder and loaded only
in its own process, all timed in interleaved turns (:func:`modelops.timed_modules.time_modules`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import nn

from modelops.load_options import LoadOptions
from modelops.manifest import Manifest
from modelops.model_process import time_artifacts
from modelops.models import count_parameters
from modelops.timed_modules import Timer, medians_or_raise, time_modules
from PR3_model_optimization.pruning.config import PruningConfig
from PR3_model_optimization.pruning.structured import structured_step

logger = logging.getLogger(__name__)

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
# channels_last must beat the default layout by this much to be recorded as the runtime hint.
CHANNELS_LAST_MIN_GAIN = 1.05


# A variant to time: a module, or (module, True) for it run with the channels_last hint (weights and input NHWC).
Variant = nn.Module | tuple[nn.Module, bool]


def compare_latency(variants: dict[str, Variant], input_shape: list[int], *, batch_size: int = 1,
                    rounds: int = 10, threads: int | None = None, timer: Timer = time_artifacts,
                    ) -> dict[str, float]:
    """Median ms per variant, each in its own process, timed in interleaved turns (drift hits all alike)."""
    first = next(iter(variants.values()))
    module = first[0] if isinstance(first, tuple) else first
    with torch.no_grad():  # the class count the timing files' manifests record
        num_classes = int(module.eval()(torch.zeros(1, *input_shape)).shape[-1])
    manifest = Manifest(num_classes=num_classes, input_shape=list(input_shape))
    times = time_modules(variants, manifest, [batch_size], rounds, options=LoadOptions(threads=threads), timer=timer)
    return medians_or_raise(times, batch_size)



def prune_to_target(pruner, model: nn.Module, original: Variant, config: PruningConfig,
                    input_shape: list[int], grad_loader=None, *, timer: Timer = time_artifacts,
                    ) -> list[dict[str, Any]]:
    """Prune structurally in ``config.amount_step`` increments until the measured latency meets the target.

    ``pruner`` comes from :func:`build_structured_pruner` with ``amount=config.max_amount`` and one
    step per increment. Each increment is timed against ``original`` (and in channels_last when allowed),
    each in its own process, and the run stops at the first step that meets the target or at
    ``config.max_amount``. Returns one row per step. The model is left at the last step taken.
    """
    from tqdm import tqdm

    n_steps = pruner.iterative_steps
    params_before = count_parameters(model)
    rows: list[dict[str, Any]] = []
    for step in tqdm(range(1, n_steps + 1), desc="prune to target", disable=not sys.stderr.isatty()):
        structured_step(pruner, model, config.importance, grad_loader)
        model.eval()
        variants: dict[str, Variant] = {"original": original, "pruned": model}
        if config.memory_format != "contiguous":
            variants["pruned_channels_last"] = (model, True)
        medians = compare_latency(variants, input_shape, batch_size=config.latency_batch_size,
                                  rounds=config.latency_rounds, threads=config.threads, timer=timer)
        kept = {"contiguous": ("pruned",), "channels_last": ("pruned_channels_last",),
                "auto": ("pruned", "pruned_channels_last")}[config.memory_format]
        best = min(kept, key=lambda v: medians[v])
        row = {"step": step, "amount": round(pruner.per_step_pruning_ratio[step], 4),
               "params_ratio": round(count_parameters(model) / params_before, 4),
               "latency_ms_p50_original": medians["original"], "latency_ms_p50": medians[best],
               # The original's median over the kept variant's, at config.latency_batch_size (a flag: not in the key).
               "speedup_x": round(medians["original"] / medians[best], 3),
               "memory_format": "channels_last" if best.endswith("channels_last") else "contiguous"}
        rows.append(row)
        logger.info("target step %d: amount %.2f params x%.2f latency %.2f ms vs %.2f ms (%.2fx, %s)", step,
                    row["amount"], row["params_ratio"], row["latency_ms_p50"], row["latency_ms_p50_original"],
                    row["speedup_x"], row["memory_format"])
        if config.target_met(row):
            logger.info("target met at amount %.2f", row["amount"])
            break
    else:
        logger.warning("target not met at --max-amount %.2f: keeping the most pruned model (%.2fx)",
                       config.max_amount, rows[-1]["speedup_x"])
    return rows
