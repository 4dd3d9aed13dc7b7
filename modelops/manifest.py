"""The manifest: the JSON file beside every model file that says what the model is and how it was made.

``resnet18.pt`` -> ``resnet18.pt.json``. :func:`write_manifest` fills in the file facts (format, size,
hash, time, library versions); :func:`read_manifest` gives it back, or None when a file has none.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from modelops.errors import ArtifactError, UsageError

FORMATS = ("state_dict", "torchscript", "exported_program", "onnx", "pickle")
MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".onnx")
SUFFIX_FORMAT = {".pt": "state_dict", ".pth": "state_dict", ".pt2": "exported_program", ".onnx": "onnx"}
ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "logits"
MANIFEST_SUFFIX = ".json"
SCHEMA_VERSION = 1


class RuntimeHints(BaseModel):
    """How the loader runs an artifact (the manifest's ``runtime``); every field is optional.

    Written as a JSON object holding only the fields that differ from their defaults, as manifests always held
    them, so older manifests load unchanged. ``engine`` names an entry of the loader's runtime table
    (:data:`modelops.artifact.RUNTIMES`); the other fields are read by the runtime that serves the file.
    """

    model_config = ConfigDict(extra="forbid")

    engine: str | None = Field(default=None, description="the runtime that runs the file (default: the format's "
                               "own: torch, torchscript, exported_program, onnxruntime), e.g. openvino")
    compile: bool = Field(default=False, description="torch formats: run through torch.compile (inductor, freezing)")
    memory_format: Literal["channels_last", "contiguous"] | None = Field(
        default=None, description="eager torch: the module's and input's memory format")
    aoti: dict[str, Any] | None = Field(
        default=None, description="exported_program: the AOTInductor package beside the file (file, torch, isa)")
    precision: Literal["f32", "bf16"] | None = Field(
        default=None, description="openvino: its INFERENCE_PRECISION_HINT (default: OpenVINO's own choice)")

    def merged(self, other: RuntimeHints) -> RuntimeHints:
        """These hints with the fields ``other`` sets (those that differ from the defaults) laid over them."""
        return self.model_copy(update=other.model_dump(exclude_defaults=True))


class Manifest(BaseModel):
    """What a model is, how it was made and what it measured. Written beside every artifact."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    format: str = "state_dict"
    file: str = ""
    arch: str | None = None
    num_classes: int
    input_shape: list[int] = Field(description="one sample's shape, [C, H, W]")
    input_dtype: str = "float32"
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    dataset: str | None = None
    split_seed: int | None = Field(default=None, description="seed of the train/val/test split it was trained on")
    parent: dict[str, Any] | None = Field(
        default=None, description="path and sha256 of the artifact this was made from"
    )
    transform: dict[str, Any] = Field(default_factory=lambda: {"kind": "baseline"})
    lineage: list[dict[str, Any]] = Field(default_factory=list, description="transforms applied since the baseline")
    metrics: dict[str, Any] = Field(default_factory=dict)
    inferred: dict[str, Any] = Field(
        default_factory=dict, description="facts the loader worked out because the file did not say them"
    )
    runtime: RuntimeHints = Field(default_factory=RuntimeHints, description="how the loader runs the file")
    sha256: str = ""
    size_mb: float = 0.0
    created_at: str = ""
    versions: dict[str, str] = Field(default_factory=dict)

    def derive(self, *, parent_path: str | Path, transform: dict[str, Any], **changes: Any) -> Manifest:
        """A manifest for a model made from this one: lineage extended, parent recorded, metrics reset."""
        child = self.model_copy(deep=True)
        child.parent = {"path": str(parent_path), "sha256": self.sha256, "format": self.format}
        child.transform = dict(transform)
        child.lineage = [*self.lineage, dict(transform)]
        child.metrics = {}
        child.runtime = RuntimeHints()
        for key, value in changes.items():
            setattr(child, key, RuntimeHints.model_validate(value) if key == "runtime" else value)
        return child

    @field_serializer("runtime")
    def _runtime_as_written(self, runtime: RuntimeHints) -> dict[str, Any]:
        return runtime.model_dump(exclude_defaults=True)


def manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def write_manifest(path: str | Path, manifest: Manifest, *, fmt: str | None = None) -> Manifest:
    """Fill in the file facts (format, size, hash, time) and write ``<path>.json``.

    Use it directly for a model file written by another tool (e.g. ONNX Runtime's quantizer).
    """
    path = Path(path)
    manifest = manifest.model_copy(deep=True)
    if fmt is not None:
        manifest.format = fmt
    if manifest.format not in FORMATS:
        raise UsageError(f"Unknown artifact format {manifest.format!r}. Choose one of: {', '.join(FORMATS)}")
    manifest.file = path.name
    manifest.sha256 = file_sha256(path)
    manifest.size_mb = round(file_size_mb(path), 4)
    manifest.metrics.setdefault("size_mb", manifest.size_mb)
    manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest.versions = _versions()
    tmp = manifest_path(path).with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(manifest_path(path))
    return manifest


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest beside ``path``, or None when there is none."""
    mpath = manifest_path(path)
    if not mpath.exists():
        return None
    try:
        return Manifest.model_validate_json(mpath.read_text())
    except ValueError as exc:
        raise ArtifactError(f"Manifest {mpath} is not valid: {exc.__class__.__name__}: {str(exc)[:300]}") from exc
