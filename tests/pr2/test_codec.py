"""A request's input decoded with the model's manifest (shapes, errors, the image preprocessing), the worker's
normalisation, and the softmax top-k answer."""

from __future__ import annotations

import numpy as np
import pytest

from modelops.artifact import Manifest
from modelops.errors import UsageError
from PR2_async_inference.codec import decode_input, model_input, top_k


def manifest() -> Manifest:
    return Manifest(num_classes=3, input_shape=[3, 8, 8], labels=["a", "b", "c"],
                    preprocessing={"size": 8, "mean": [0.5] * 3, "std": [0.5] * 3})


def test_decode_input_shapes_and_errors():
    m = manifest()
    assert decode_input(np.zeros((1, 3, 8, 8)).tolist(), m).shape == (3, 8, 8)
    with pytest.raises(UsageError, match=r"model expects \[3, 8, 8\]"):
        decode_input(np.zeros((3, 4, 4)).tolist(), m)
    with pytest.raises(UsageError, match="NaN"):
        decode_input(np.full((3, 8, 8), np.nan).tolist(), m)
    with pytest.raises(UsageError, match="must be a base64 image string or a nested list"):
        decode_input(3, m)


def test_decode_image_applies_manifest_preprocessing():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 127)).save(buf, "PNG")
    pixels = decode_input(base64.b64encode(buf.getvalue()).decode(), manifest())
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8  # what the queue carries
    tensor = model_input(pixels, manifest())  # what the worker feeds the model
    assert tensor.dtype == np.float32
    # (x/255 - 0.5) / 0.5 per channel
    assert tensor[0].mean() == pytest.approx(1.0) and tensor[1].mean() == pytest.approx(-1.0)
    assert tensor[2].mean() == pytest.approx(127 / 255 * 2 - 1, abs=1e-4)


def test_top_k_is_softmax_sorted():
    out = top_k(np.array([1.0, 3.0, 2.0]), ["a", "b", "c"], 2)
    assert [p["label"] for p in out] == ["b", "c"]
    assert out[0]["score"] > out[1]["score"] and sum(p["score"] for p in top_k(np.zeros(3), [], 3)) == \
        pytest.approx(1.0)
