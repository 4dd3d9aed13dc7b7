"""A request's input, as the API takes it and the worker feeds it to the model, and the answer it gets back.

The API decodes ``data`` with the model's manifest (:func:`decode_input`): a base64 PNG/JPEG becomes uint8 pixels
(C, H, W) resized and cropped by the manifest's preprocessing, a nested list a float32 tensor of the model's input
shape. Those travel on the requests topic; the worker normalises a batch of them (:func:`model_batch`) just before
the forward pass and answers with the softmax top-k of each sample's logits (:func:`top_k`).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelops.artifact import Manifest
from modelops.errors import UsageError
from modelops.preprocessing import image_to_pixels, normalize


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
