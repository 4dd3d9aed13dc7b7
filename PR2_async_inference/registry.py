"""The model registry (YAML) and input decoding shared by the API and the worker.

The API validates and preprocesses inputs with the artifact's manifest only (no model load); the worker
loads the artifact with :func:`modelops.artifact.load_artifact`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from modelops.artifact import Manifest, read_manifest
from modelops.errors import UsageError

logger = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """One registry entry."""

    name: str
    artifact: Path
    fallbacks: list[Path] = Field(default_factory=list)
    max_batch_size: int | None = Field(None, ge=1)
    max_batch_delay_ms: float | None = Field(None, ge=0)
    description: str = ""

    def resolve(self) -> Path | None:
        """The first of artifact/fallbacks that exists, or None."""
        for path in [self.artifact, *self.fallbacks]:
            if path.exists():
                return path
        return None


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
    """The artifact path and manifest the registry entry points at; raises ArtifactError-like UsageError."""
    path = spec.resolve()
    if path is None:
        raise FileNotFoundError(f"artifact for model {spec.name!r} not found: {spec.artifact}")
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(
            f"artifact {path} has no manifest {path}.json (needed for shapes/preprocessing)"
        )
    return path, manifest


def decode_image(data: str, manifest: Manifest) -> np.ndarray:
    """Base64 PNG/JPEG -> uint8 pixels (C, H, W) resized to the model's input.

    Images travel on the requests topic as these pixels, a quarter of the bytes of the float tensor;
    the worker applies :func:`normalize_pixels` just before the forward pass."""
    from PIL import Image, UnidentifiedImageError

    if "," in data[:100] and data.startswith("data:"):  # data URL
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"'data' is neither a nested list nor valid base64: {exc}") from exc
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            channels, height, width = manifest.input_shape
            size = (manifest.preprocessing or {}).get("size") or height
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize(
                    (width, height) if size == height else (size, size), Image.Resampling.BILINEAR
                )
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise UsageError(f"'data' is base64 but not a decodable PNG/JPEG image: {exc}") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def normalize_pixels(pixels: np.ndarray, manifest: Manifest) -> np.ndarray:
    """uint8 pixels (C, H, W) -> float32 scaled to [0, 1] and normalised with the manifest's mean/std."""
    channels = pixels.shape[0]
    pre = manifest.preprocessing or {}
    mean = np.asarray(pre.get("mean") or [0.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.get("std") or [1.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((pixels.astype(np.float32) / 255.0 - mean) / std, dtype=np.float32)


def model_input(tensor: np.ndarray, manifest: Manifest) -> np.ndarray:
    """What the model consumes: image pixels (uint8) are normalised here; float tensors pass unchanged."""
    return normalize_pixels(tensor, manifest) if tensor.dtype == np.uint8 else tensor


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
