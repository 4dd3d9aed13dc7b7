"""One model under test, loaded once, then asked for timed turns, memory figures and predictions.

:class:`ModelSession` does the work inside whatever process holds the model; :mod:`modelops.model_process`
runs one in its own spawned process per model and forwards calls to it. Timing happens where the model is,
so whatever carries the calls (a pipe) is never timed. Parts add their own requests by subclassing it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from modelops.load_options import LoadOptions
from modelops.memory import peak_rss_mb, reset_peak_rss, rss_mb, runtime_baseline_mb, weight_bytes


class ModelSession:
    """Load one artifact and serve measurement requests on it.

    Args:
        name: the model's label in reports.
        path: the artifact file.
        options: how to load it (:class:`~modelops.load_options.LoadOptions`; its ``threads`` set torch's and
            ONNX Runtime's intra-op threads, all usable cores where None) (default: ``LoadOptions()``). A spawned
            worker receives it pickled: it has none of the script's flags but these.
        seed: seed of the random input batches (default: 0).
    """

    def __init__(self, name: str, path: str, options: LoadOptions | None = None, *, seed: int = 0) -> None:
        self.name = name
        self.path = path
        self.options = options or LoadOptions()
        self.device = self.options.device
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

        threads = self.options.threads or usable_cores()
        torch.set_num_threads(threads)
        self.baseline_mb = runtime_baseline_mb()
        started = time.perf_counter()
        self.predictor = load_artifact(self.path, replace(self.options, threads=threads))
        load_s = time.perf_counter() - started
        load_rss = rss_mb() - self.baseline_mb
        manifest = self.predictor.manifest
        params, macs = _params_and_macs(self.predictor)
        weights = weight_bytes(self.predictor)
        return {
            "format": manifest.format, "backend": self.predictor.backend, "arch": manifest.arch,
            "input_shape": list(manifest.input_shape), "num_classes": manifest.num_classes,
            "transform": (manifest.transform or {}).get("kind"), "size_mb": round(file_size_mb(self.path), 4),
            "params": params, "macs": macs, "manifest_top1_pct": manifest.metrics.get("accuracy"),
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

    def first_call(self, batch_size: int) -> float:
        """Seconds of one call at ``batch_size``; right after :meth:`load` that is the first call's set-up
        (graph compilation, kernel selection), which with the load time makes the cold start."""
        from modelops.timing import time_call

        batch = self._batch(batch_size)
        return time_call(lambda: self.predictor(batch), self.device) / 1e3

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
    if params is None and predictor.manifest.format == "onnx":
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
