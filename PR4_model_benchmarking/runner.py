"""PR4's model session: the core's :class:`~modelops.model_session.ModelSession` plus LoadGen runs.

The benchmark runs one :class:`BenchSession` per model through :func:`modelops.model_process.start_session`,
by default in its own spawned process (:class:`modelops.model_process.WorkerProxy`), so each model's memory
is its own and the parent interleaves the models turn by turn (:func:`modelops.model_process.time_batch`).
LoadGen runs inside that same process, over the same loaded predictor and its threads
(:func:`PR4_model_benchmarking.loadgen_sut.run_test`), so no pipe sits between LoadGen and the model.
"""

from __future__ import annotations

from typing import Any

from modelops.model_session import ModelSession


def describe_lineage(manifest: Any) -> str | None:
    """The kinds of the transforms since the baseline, in order, each once: "pruning + quantization"."""
    kinds = [step.get("kind") for step in getattr(manifest, "lineage", None) or [] if step.get("kind")]
    kinds = [k for k in dict.fromkeys(kinds) if k != "baseline"]
    return " + ".join(kinds) or None


class BenchSession(ModelSession):
    """A :class:`ModelSession` that also runs MLPerf LoadGen tests on its predictor."""

    _library: Any = None
    _library_spec: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        """:meth:`ModelSession.load`, with ``transform`` naming every step since the baseline (a pruned, then
        distilled, then quantized model is "pruning + distillation + quantization", not its last step)."""
        info = super().load()
        info["transform"] = describe_lineage(self.predictor.manifest) or info.get("transform")
        return info

    def sample_library(self, spec: dict[str, Any]) -> Any:
        """The query sample library ``spec`` describes, built once per spec.

        ``spec``: ``count`` samples; with ``dataset`` (and ``image_size``, ``split_seed``, ``data_dir``) the first
        ``count`` images of its test split and their labels, else seeded random inputs of the model's shape
        (the inputs the latency figures use: CNN timing does not depend on pixel values).
        """
        import torch

        from PR4_model_benchmarking.loadgen_sut import SampleLibrary

        if self._library is not None and self._library_spec == spec:
            return self._library
        self._library = None  # drop the old inputs before making new ones
        labels = None
        if spec.get("dataset"):
            from modelops.data import load_dataset, make_loader

            data = load_dataset(spec["dataset"], image_size=spec["image_size"], seed=spec["split_seed"],
                                data_dir=spec["data_dir"])
            images, targets = zip(*make_loader(data.test, 256, limit=spec["count"]), strict=True)
            inputs, labels = torch.cat(images), torch.cat(targets).numpy()
        else:
            generator = torch.Generator().manual_seed(self.seed)
            inputs = torch.randn(spec["count"], *self.predictor.input_shape, generator=generator)
        self.predictor.check_input(inputs[:1])
        if self.predictor.backend != "onnxruntime":
            inputs = inputs.to(self.device)
        self._library, self._library_spec = SampleLibrary(inputs, labels), dict(spec)
        return self._library

    def loadgen(self, settings: dict[str, Any], log_dir: str, samples: dict[str, Any], max_batch: int = 1,
                ) -> dict[str, Any]:
        """One LoadGen test (:class:`~PR4_model_benchmarking.loadgen_sut.LoadGenSettings` fields in ``settings``)
        over the library ``samples`` describes; logs in ``log_dir``."""
        from PR4_model_benchmarking.loadgen_sut import LoadGenSettings, run_test

        return run_test(self.predictor, self.sample_library(samples), LoadGenSettings(**settings), log_dir,
                        max_batch=max_batch, device=self.device)
