"""The model registry (YAML) and input decoding shared by the API and the worker.

The API validates and preprocesses inputs with the artifact's manifest (no model load when the file has one;
for a file without one, the manifest the loader works out); the worker loads the artifact with
:func:`modelops.artifact.load_artifact`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, Field, ValidationError

from modelops.artifact import Manifest, manifest_path, read_manifest
from modelops.errors import ArtifactError, UsageError
from modelops.preprocessing import image_to_pixels, normalize

logger = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """One registry entry.

    A fallback serves under this name only when its manifest declares the same input shape and labels as
    the entry (``input_shape`` and ``labels`` here, else the artifact's own manifest): a client asking for
    this name never gets a model that reads its input differently or names other classes.
    """

    name: str
    artifact: Path
    fallbacks: list[Path] = Field(default_factory=list)
    input_shape: list[int] | None = Field(None, description="what a fallback must declare, (C, H, W)")
    labels: list[str] | None = Field(None, description="what a fallback must declare, in class-index order")
    arch: str | None = Field(None, description="torchvision architecture of a bare state_dict artifact, where its "
                                                "parameter names and shapes fit several")
    trust_pickle: bool = Field(False, description="load a whole pickled module (runs the code it holds)")
    max_batch_size: int | None = Field(None, ge=1)
    max_batch_delay_ms: float | None = Field(None, ge=0)
    description: str = ""

    def resolve(self) -> Path | None:
        """The artifact, else the first fallback that declares the same inputs and labels; None if neither."""
        return self._resolve()[0]

    def unavailable_reason(self) -> str | None:
        """Why nothing is served under this name (names the missing path), or None when something is."""
        return self._resolve()[1]

    def public_reason(self, reason: str) -> str:
        """``reason`` with this entry's paths reduced to their file names, for answers that leave the server."""
        for path in sorted({self.artifact, *self.fallbacks}, key=lambda p: len(str(p)), reverse=True):
            reason = reason.replace(str(path), path.name)
        return reason

    def _resolve(self) -> tuple[Path | None, str | None]:
        if self.artifact.is_file():
            return self.artifact, None
        reason = f"artifact {self.artifact} of model {self.name!r} does not exist"
        if not self.fallbacks:
            return None, reason
        expected = self._expected()
        if expected is None:
            return None, (f"{reason}; its fallbacks are not used because the entry declares no input_shape and "
                          "labels to check them against")
        for path in self.fallbacks:
            manifest = read_manifest(path) if path.is_file() else None
            if manifest is not None and _declares(manifest) == expected:
                logger.warning("model %r: %s; serving fallback %s (same input shape and labels)", self.name,
                               reason, path)
                return path, None
        return None, f"{reason}, and no fallback declares its input shape {expected[0]} and labels"

    def _expected(self) -> tuple[list[int], list[str]] | None:
        primary = read_manifest(self.artifact)  # a manifest can outlive its artifact file
        if self.input_shape is not None and self.labels is not None:
            return list(self.input_shape), list(self.labels)
        return _declares(primary) if primary is not None else None


def _declares(manifest: Manifest) -> tuple[list[int], list[str]]:
    labels = list(manifest.labels) or [str(i) for i in range(manifest.num_classes)]
    return list(manifest.input_shape), labels


class Registry(BaseModel):
    default_model: str
    models: dict[str, ModelSpec]

    def get(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UsageError(f"Unknown model {name!r}. Choose one of: {', '.join(sorted(self.models))}")
        return self.models[name]


def load_registry(path: str | Path) -> Registry:
    """Read the registry YAML; relative artifact paths are resolved against the file's folder."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model registry {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().parent
    models = {}
    for name, entry in (raw.get("models") or {}).items():
        entry = dict(entry or {})
        entry["artifact"] = base / entry["artifact"]
        entry["fallbacks"] = [base / p for p in entry.get("fallbacks", [])]
        try:
            models[name] = ModelSpec(name=name, **entry)
        except ValidationError as exc:
            raise UsageError(f"registry {path}: model {name!r} is invalid: {exc}") from exc
    if not models:
        raise UsageError(f"registry {path} lists no models")
    default = raw.get("default_model") or next(iter(models))
    return Registry(default_model=default, models=models)


def write_registry(path: str | Path, models: Mapping[str, str | Path | Mapping[str, Any]],
                   default_model: str | None = None) -> Path:
    """Write a registry YAML that :func:`load_registry` reads; artifact paths are written absolute.

    Args:
        path: the YAML file to write.
        models: name -> artifact path, or name -> entry (``artifact`` plus any :class:`ModelSpec` field).
        default_model: the model served when a request names none (default: the first).
    """
    entries = {}
    for name, entry in models.items():
        entry = dict(entry) if isinstance(entry, Mapping) else {"artifact": entry}
        entry["artifact"] = str(Path(entry["artifact"]).resolve())
        entries[name] = entry
    path = Path(path)
    path.write_text(yaml.safe_dump({"default_model": default_model or next(iter(models)), "models": entries},
                                   sort_keys=False))
    return path


def model_manifest(spec: ModelSpec) -> tuple[Path, Manifest]:
    """The artifact path and manifest the registry entry points at: the manifest beside the artifact, else the one
    the worker's loader works out for it (:func:`derived_manifest`).

    Raises:
        FileNotFoundError: no artifact to serve (the message names the path).
        ArtifactError: the artifact has no manifest and the loader cannot work one out (the message says why).
    """
    path, reason = spec._resolve()
    if path is None:
        raise FileNotFoundError(reason)
    manifest = read_manifest(path)
    return path, manifest if manifest is not None else derived_manifest(path, spec)


def derived_manifest(path: Path, spec: ModelSpec) -> Manifest:
    """The manifest of a file that has none, as the worker's loader sees it: the entry's ``arch`` (else the one
    its parameters identify) and the head's class count for a bare state_dict, the input shape the file declares
    or a forward pass accepts. This builds the model once; callers cache the result."""
    # Imported here: only a file without a manifest needs the loader's model-building side.
    from modelops.artifact import load_artifact

    try:
        return load_artifact(path, arch=spec.arch, trust_pickle=spec.trust_pickle, compile=False, threads=1).manifest
    except Exception as exc:  # any failure to build or run the model means the same here: nothing to serve
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"artifact {path} has no manifest {manifest_path(path).name} and the loader cannot "
                            f"work one out: {first}") from exc


def undecodable_image(exc: Exception) -> UsageError:
    """The error for base64 that holds no image PIL can open or decode (its header, or its pixels)."""
    return UsageError(f"'data' is base64 but not a decodable PNG/JPEG image: {exc}")


def open_image(data: str) -> Any:
    """Base64 (or a data URL) -> an opened PIL image: its header is read (format, size), its pixels are not."""
    from PIL import Image, UnidentifiedImageError

    if "," in data[:100] and data.startswith("data:"):  # data URL
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"'data' is neither a nested list nor valid base64: {exc}") from exc
    try:
        return Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise undecodable_image(exc) from exc


def image_pixels(image: Any, manifest: Manifest) -> np.ndarray:
    """An opened PIL image -> uint8 pixels (C, H, W) of the model's input, by the manifest's preprocessing.

    The resize (and centre crop) is :func:`modelops.preprocessing.image_to_pixels`, the function the model's
    dataset applied when it was evaluated. Images travel on the requests topic as these pixels, a quarter of
    the bytes of the float tensor; the worker applies :func:`normalize_pixels` just before the forward pass."""
    from PIL import Image

    try:
        with image:
            image.load()
            pixels = image_to_pixels(image, manifest.preprocessing or {}, manifest.input_shape)
    except (OSError, Image.DecompressionBombError) as exc:
        raise undecodable_image(exc) from exc
    return np.ascontiguousarray(pixels.numpy())


def decode_image(data: str, manifest: Manifest) -> np.ndarray:
    """Base64 PNG/JPEG -> uint8 pixels (C, H, W) of the model's input (:func:`open_image`, :func:`image_pixels`)."""
    return image_pixels(open_image(data), manifest)


def normalize_pixels(pixels: np.ndarray, manifest: Manifest) -> np.ndarray:
    """uint8 pixels (C, H, W) -> float32, by :func:`modelops.preprocessing.normalize` with the manifest's mean/std."""
    return normalize(pixels, manifest.preprocessing or {}).numpy()


def model_input(tensor: np.ndarray, manifest: Manifest) -> np.ndarray:
    """What the model consumes: image pixels (uint8) are normalised here; float tensors pass unchanged."""
    return normalize_pixels(tensor, manifest) if tensor.dtype == np.uint8 else tensor


def model_batch(tensors: Sequence[np.ndarray], manifest: Manifest) -> torch.Tensor:
    """The model's input batch (N, C, H, W) from request samples: a batch of image pixels is stacked as uint8 and
    normalised in one pass (a quarter of the bytes to stack); mixed or float samples go one by one."""
    if all(t.dtype == np.uint8 for t in tensors):
        return normalize(np.stack(tensors), manifest.preprocessing or {})
    return torch.from_numpy(np.stack([model_input(t, manifest) for t in tensors]))


def decode_tensor(data: Any, manifest: Manifest) -> np.ndarray:
    """A nested list (already preprocessed) -> float32 (C, H, W); a leading batch dim of 1 is accepted."""
    try:
        array = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"'data' is not a rectangular nested list of numbers: {str(exc)[:200]}") from exc
    expected = tuple(manifest.input_shape)
    if array.ndim == len(expected) + 1 and array.shape[0] == 1:
        array = array[0]
    if array.shape != expected:
        raise UsageError(f"'data' has shape {list(array.shape)}; model expects {list(expected)} (C, H, W)")
    if not np.isfinite(array).all():
        raise UsageError("'data' contains NaN or infinite values")
    return np.ascontiguousarray(array)


def decode_input(data: Any, manifest: Manifest) -> np.ndarray:
    """A request's ``data`` -> what travels on the queue: uint8 pixels for an image, float32 for a tensor."""
    if isinstance(data, str):
        return decode_image(data, manifest)
    if isinstance(data, list):
        return decode_tensor(data, manifest)
    raise UsageError(f"'data' must be a base64 image string or a nested list, got {type(data).__name__}")


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """Softmax top-k of one sample's logits as [{label, index, score}]."""
    z = logits.astype(np.float64) - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    k = max(1, min(k, probs.size))
    order = np.argsort(-probs)[:k]
    return [
        {"label": labels[i] if i < len(labels) else str(i), "index": int(i), "score": float(probs[i])}
        for i in order
    ]
