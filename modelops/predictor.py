"""What every runtime hands back: a :class:`Predictor`, and what a runtime is given to make one.

:class:`Runtime` is one entry of the loader's table (:data:`modelops.artifact.RUNTIMES`): a name (the manifest's
``runtime.engine`` and :attr:`Predictor.backend`), the artifact formats it runs and the function that loads a
file (:class:`LoadRequest` -> :class:`Predictor`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.manifest import Manifest, RuntimeHints, file_sha256, file_size_mb, manifest_path
from modelops.model_probe import probe

logger = logging.getLogger(__name__)


class Predictor:
    """A loaded artifact: ``predictor(batch) -> logits`` whatever the format.

    Attributes:
        manifest: the artifact's manifest (a minimal one is inferred when the file has none).
        path: the model file.
        backend: the name of the runtime that runs it: ``torch`` (eager), ``torchscript``, ``exported_program``,
            ``onnxruntime``, ``openvino`` (an ONNX artifact whose manifest says ``runtime: {"engine":
            "openvino"}``) or a registered one.
        module: the ``nn.Module`` behind it, or None for an ONNX file.
    """

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], *, manifest: Manifest, path: Path, backend: str,
        module: nn.Module | None = None, device: str = "cpu", memory_format: torch.memory_format | None = None,
    ) -> None:
        self._fn = fn
        self.manifest = manifest
        self.path = path
        self.backend = backend
        self.module = module
        self.device = torch.device(device)
        self.memory_format = memory_format

    @property
    def input_shape(self) -> list[int]:
        return list(self.manifest.input_shape)

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def check_input(self, batch: torch.Tensor) -> None:
        expected = tuple(self.manifest.input_shape)
        if batch.dim() != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise UsageError(
                f"Model {self.path.name} expects input of shape (N, {', '.join(map(str, expected))}), "
                f"got {tuple(batch.shape)}"
            )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.manifest.format != "onnx":  # an ONNX runtime takes the CPU tensor as it is
                batch = batch.to(self.device)
                if self.memory_format is not None:
                    batch = batch.contiguous(memory_format=self.memory_format)
            return self._fn(batch)

    def __repr__(self) -> str:
        return f"Predictor({self.path}, format={self.manifest.format}, backend={self.backend})"


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`modelops.artifact.load_artifact` was asked, handed to the runtime that serves the file.

    ``manifest`` is None for a file without one (the runtime infers one with :func:`infer_manifest`, trying
    ``options.image_size`` first); ``hints`` are its ``runtime`` hints; ``options`` the caller's
    :class:`~modelops.load_options.LoadOptions`.
    """

    path: Path
    fmt: str
    manifest: Manifest | None
    hints: RuntimeHints
    options: LoadOptions

    @property
    def wants_compile(self) -> bool:
        """torch.compile: as the caller says, else as the manifest's hints say."""
        return self.hints.compile if self.options.compile is None else self.options.compile

    @property
    def memory_format(self) -> torch.memory_format | None:
        """The torch memory format the hints ask for (None: the default, contiguous)."""
        return torch.channels_last if self.hints.memory_format == "channels_last" else None


@dataclass(frozen=True)
class Runtime:
    """One way to run artifact files: an entry of the loader's table.

    Args:
        name: the manifest's ``runtime.engine`` value that picks it, and the predictor's ``backend``.
        formats: the artifact formats it runs; the first runtime in the table that runs a format is that format's
            default (used when a manifest names no engine).
        load: makes the predictor of a file.
    """

    name: str
    formats: tuple[str, ...]
    load: Callable[[LoadRequest], Predictor]


def infer_manifest(
    path: Path, fmt: str, fn: Callable[[torch.Tensor], torch.Tensor], *, arch: str | None = None,
    input_shape: list[int] | None = None, inferred: dict[str, Any] | None = None, image_size: int | None = None,
) -> Manifest:
    """A manifest for a model file that has none: input shape and class count from a forward pass of ``fn``
    (``image_size`` is the side tried first where the file declares no ``input_shape``)."""
    shape, num_classes = probe(fn, path, input_shape, side=image_size)
    facts = {**(inferred or {}), "input_shape": shape, "num_classes": num_classes,
             "input_from": "declared by the file" if input_shape else "a forward pass that ran"}
    logger.warning("%s has no manifest (%s); using input %s, %d classes", path, manifest_path(path).name, shape,
                   num_classes)
    return Manifest(format=fmt, file=path.name, arch=arch, num_classes=num_classes, input_shape=shape,
                    inferred=facts, sha256=file_sha256(path), size_mb=round(file_size_mb(path), 4))
