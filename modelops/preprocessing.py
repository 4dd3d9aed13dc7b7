"""The one definition of how an image becomes a model input, shared by training, evaluation and serving.

A model's manifest records its ``preprocessing`` dict; the dataset that trained and evaluated it and the
service that serves it both call :func:`image_to_pixels` then :func:`normalize` with that dict, so a served
image gives exactly the tensor the model was evaluated on. Keys:

- ``mean``, ``std``: per-channel statistics applied to pixels scaled to [0, 1];
- ``resize`` (optional): the short side is resized to this, then the centre is cropped to the input size
  (``--preprocessing imagenet``: resize 256, crop 224); without it the image is resized to the input size;
- ``name`` (optional): the preset the dict came from.

Pixels stay uint8 until :func:`normalize` (the service sends them over its queue at a quarter of the bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from modelops.errors import UsageError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PRESETS = ("imagenet",)
# torchvision's ImageNet evaluation: short side 256, centre crop 224 (the ratio is kept for other crops).
IMAGENET_RESIZE_RATIO = 256 / 224


def preset(name: str, crop: int = 224) -> dict[str, Any]:
    """A named preprocessing: ``imagenet`` is resize ``crop*256/224`` (256 for 224), centre crop, ImageNet mean/std."""
    if name not in PRESETS:
        raise UsageError(f"Unknown preprocessing {name!r}. Choose one of: {', '.join(PRESETS)}")
    return {"name": name, "resize": round(crop * IMAGENET_RESIZE_RATIO), "size": crop,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": 3}


def image_to_pixels(image: Any, preprocessing: Mapping[str, Any], input_shape: Sequence[int]) -> torch.Tensor:
    """A PIL image -> uint8 pixels (C, H, W) of the model's input size: resize (and centre crop), no scaling."""
    from torchvision.transforms.v2 import functional as F

    channels, height, width = (int(d) for d in input_shape)
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:  # convert() copies even to the same mode
        image = image.convert(mode)
    pixels = F.pil_to_tensor(image)
    resize = preprocessing.get("resize")
    if resize:
        pixels = F.resize(pixels, [int(resize)], antialias=True)
        pixels = F.center_crop(pixels, [height, width])
    elif tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.resize(pixels, [height, width], antialias=True)
    return pixels.contiguous()


def normalize(pixels: torch.Tensor | np.ndarray, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """uint8 pixels (C, H, W), or a batch of them (N, C, H, W) -> float32 scaled to [0, 1] and normalised with
    the mean and std."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    channels = pixels.shape[-3]
    mean = torch.tensor(preprocessing.get("mean") or [0.0] * channels, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(preprocessing.get("std") or [1.0] * channels, dtype=torch.float32).view(-1, 1, 1)
    # (x / 255 - mean) / std as x * (1 / (255 std)) - mean / std: two in-place passes over one new tensor
    # instead of three passes that each allocate one (a served batch of 224x224 images is several MB).
    return pixels.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std).contiguous()


def image_transform(preprocessing: Mapping[str, Any], input_shape: Sequence[int]) -> Callable[[Any], torch.Tensor]:
    """PIL image -> model input tensor; what a dataset of image files applies to each sample."""
    def transform(image: Any) -> torch.Tensor:
        return normalize(image_to_pixels(image, preprocessing, input_shape), preprocessing)

    return transform
