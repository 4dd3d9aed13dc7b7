"""One preprocessing definition: an image gives the same tensor in evaluation and in serving."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelops.artifact import Manifest
from modelops.cli import common_parser, load_model_dataset
from modelops.data import load_dataset
from modelops.errors import UsageError
from PR2_async_inference.codec import decode_input, model_input


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(300 + 7 * i, 260, 3), dtype=np.uint8)  # not square, not 256
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_one_image_gives_the_same_tensor_in_evaluation_and_serving(tmp_path):
    root = image_folder(tmp_path / "photos")
    data = load_dataset(f"imagefolder:{root}", preprocessing="imagenet", seed=0)
    assert data.preprocessing["resize"] == 256 and data.input_shape == [3, 224, 224]
    manifest = Manifest(num_classes=data.num_classes, input_shape=data.input_shape,
                        preprocessing=data.preprocessing, labels=data.labels)
    view = data.test
    image, _ = view[0]
    file_path, _ = view.folder.samples[int(view.indices[0])]
    encoded = base64.b64encode(Path(file_path).read_bytes()).decode()
    served = model_input(decode_input(encoded, manifest), manifest)
    assert served.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(served), image, rtol=0, atol=0)


def test_imagenet_preprocessing_is_recorded_and_labels_come_from_a_file(tmp_path):
    root = image_folder(tmp_path / "photos")
    assert load_dataset(f"imagefolder:{root}").labels == ["cat", "dog"]
    labels = tmp_path / "labels.txt"
    labels.write_text("felis catus\ncanis familiaris\n")
    args = common_parser().parse_args(["--dataset", f"imagefolder:{root}", "--preprocessing", "imagenet",
                                       "--labels", str(labels)])
    manifest = Manifest(num_classes=2, input_shape=[3, 224, 224])
    data = load_model_dataset(args, manifest)
    assert data.labels == ["felis catus", "canis familiaris"]
    assert data.preprocessing["name"] == "imagenet"
    assert data.preprocessing["mean"] == [0.485, 0.456, 0.406]
    labels.write_text("one\n")
    with pytest.raises(UsageError, match="names 1 classes but there are 2"):
        load_model_dataset(args, manifest)


def test_fake_data_takes_the_models_class_count_and_input_size():
    args = common_parser().parse_args(["--dataset", "fake"])
    data = load_model_dataset(args, Manifest(num_classes=1000, input_shape=[3, 64, 64]))
    assert data.num_classes == 1000 and data.input_shape == [3, 64, 64]
    assert int(max(label for _, label in data.test)) < 1000
    with pytest.raises(UsageError, match="--preprocessing imagenet applies to image files"):
        load_dataset("digits", preprocessing="imagenet")
