"""The worker's forward passes: loading the registry's models and running a batch of requests through one, with
a failing batch retried request by request so one poison input does not fail its neighbours."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from modelops.artifact import Predictor, load_artifact
from modelops.load_options import LoadOptions
from PR2_async_inference import metrics
from PR2_async_inference.codec import model_batch
from PR2_async_inference.messaging.messages import RequestMessage
from PR2_async_inference.registry import Registry

logger = logging.getLogger(__name__)

#: Backends that run a model on their own thread pool (``intra_op_num_threads``), not on torch's OpenMP threads.
OWN_THREAD_POOL_BACKENDS = frozenset({"onnxruntime", "openvino"})


def load_predictors(registry: Registry, threads: int | None, *, spinning: bool = False,
                    ) -> tuple[dict[str, Predictor], dict[str, str]]:
    """({model: predictor}, {model: load error}): every model whose artifact exists and loads, warmed up
    (:func:`warm_up`); a missing or broken one only fails its own requests. ``spinning``: ONNX Runtime's idle
    intra-op threads spin-wait (its default) instead of sleeping."""
    predictors: dict[str, Predictor] = {}
    errors: dict[str, str] = {}
    for name, spec in registry.models.items():
        path = spec.resolve()
        if path is None:
            errors[name] = f"artifact for model {name!r} not found: {spec.artifact}"
            logger.warning(errors[name])
            continue
        try:
            # INFERENCE_RUNTIME_SPINNING (settings.py) says why the worker's default differs from ONNX Runtime's.
            options = LoadOptions(threads=threads, arch=spec.arch, trust_pickle=spec.trust_pickle,
                                  ort_session_config={"session.intra_op.allow_spinning": "1" if spinning else "0"})
            predictor = load_artifact(path, options)
            warm_s = warm_up(predictor, spec.max_batch_size)
            predictors[name] = predictor
            logger.info("loaded model %s from %s (%s), warmed up in %.2f s", name, path, predictor.backend, warm_s)
        except Exception as exc:
            errors[name] = f"cannot load {path}: {exc}"
            logger.error(errors[name])
    return predictors, errors


def torch_only_preprocesses(predictors: dict[str, Predictor]) -> bool:
    """True when every loaded model runs on its runtime's own pool, so torch only normalises pixels in the worker:
    the worker then gives torch one thread.

    One thread because OpenMP's idle threads spin-wait after each parallel region: after a batch's normalisation
    they would hold the cores the runtime's threads need for the forward pass that follows
    (``benchmarks/bench_e2e.py`` reports the workers' CPU outside the forward pass, where that cost shows).
    """
    return bool(predictors) and all(p.backend in OWN_THREAD_POOL_BACKENDS for p in predictors.values())


def warm_up(predictor: Predictor, max_batch_size: int | None = None) -> float:
    """Run ``predictor`` once at batch 1 and once at ``max_batch_size``; the seconds it took.

    The worker calls this before it joins the consumer group, so no request pays a first call: allocation, a
    torch.compile'd model's compile (done per batch size: the two the batcher produces most), OpenVINO's and
    ONNX Runtime's first-run set-up.
    """
    started = time.perf_counter()
    for batch_size in sorted({1, max_batch_size or 1}):
        predictor(torch.zeros(batch_size, *predictor.input_shape))
    return time.perf_counter() - started


def forward(predictor: Predictor, tensors: list[np.ndarray], model: str = "") -> tuple[np.ndarray, float]:
    """(logits as float32 numpy, seconds of the forward pass) for a batch of request tensors. The process CPU
    time the pass took (every thread: the model's intra-op threads do the work) is added to
    ``inference_forward_cpu_seconds_total{model}``."""
    batch = model_batch(tensors, predictor.manifest)
    predictor.check_input(batch)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        logits = predictor(batch)
    finally:
        seconds = time.perf_counter() - t0
        metrics.FORWARD_CPU.labels(model).inc(max(0.0, time.process_time() - cpu0))
    out = logits.detach().float().cpu().numpy()
    if out.shape[0] != len(tensors) or not np.isfinite(out).all():
        raise ValueError(f"model returned {out.shape} with non-finite values or a wrong batch dimension")
    return out, seconds


@dataclass
class BatchOutcome:
    """What a batch's forward passes gave: per request (message, logits or None, error or None)."""

    results: list[tuple[RequestMessage, np.ndarray | None, str | None]]
    batch_size: int  # the size the requests actually ran at (1 when the batch was split up)
    seconds: float  # the forward pass's time (the last single pass when split up)
    whole_batch: bool  # True when the batch ran as one forward pass


def predict_batch(predictor: Predictor, model: str, batch: list[RequestMessage]) -> BatchOutcome:
    """Run ``batch`` as one forward pass; when that raises, run its requests one by one."""
    try:
        outputs, seconds = forward(predictor, [m.tensor for m in batch], model)
    except Exception as exc:
        if len(batch) == 1:
            return BatchOutcome([(batch[0], None, f"{type(exc).__name__}: {exc}")], 1, 0.0, False)
        # Isolate the bad request(s): one poison input must not fail its neighbours.
        logger.warning("batch of %d for %s failed (%s); running its requests one by one", len(batch), model, exc)
        return predict_one_by_one(predictor, model, batch)
    metrics.BATCH_SIZE.labels(model).observe(len(batch))
    metrics.LATENCY.labels(model).observe(seconds)
    return BatchOutcome([(m, outputs[i], None) for i, m in enumerate(batch)], len(batch), seconds, True)


def predict_one_by_one(predictor: Predictor, model: str, batch: list[RequestMessage]) -> BatchOutcome:
    outcome = BatchOutcome([], 1, 0.0, False)
    for m in batch:
        try:
            out, seconds = forward(predictor, [m.tensor], model)
        except Exception as exc:
            outcome.results.append((m, None, f"{type(exc).__name__}: {exc}"))
            continue
        metrics.BATCH_SIZE.labels(model).observe(1)
        metrics.LATENCY.labels(model).observe(seconds)
        outcome.results.append((m, out[0], None))
        outcome.seconds = seconds
    return outcome
