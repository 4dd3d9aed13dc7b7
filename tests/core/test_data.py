"""Datasets: deterministic seeded splits, normalisation, bad names, calibration subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modelops.artifact import Manifest
from modelops.cli import common_parser, split_seed
from modelops.data import calibration_batches, load_dataset, split_indices
from modelops.errors import UsageError


def test_digits_splits_are_deterministic_disjoint_and_stratified():
    first = load_dataset("digits", image_size=16, seed=3)
    second = load_dataset("digits", image_size=16, seed=3)
    other = load_dataset("digits", image_size=16, seed=4)
    assert (len(first.train), len(first.val), len(first.test)) == (1077, 360, 360)
    torch.testing.assert_close(first.test.tensors[0], second.test.tensors[0])
    assert not torch.equal(first.test.tensors[1], other.test.tensors[1])
    labels = np.arange(100) % 10
    idx = split_indices(labels, seed=0)
    assert set(idx["train"]).isdisjoint(idx["val"]) and set(idx["val"]).isdisjoint(idx["test"])
    assert sorted(np.concatenate(list(idx.values()))) == list(range(100))
    assert np.bincount(labels[idx["test"]]).tolist() == [2] * 10  # stratified


def test_digits_images_are_normalised_three_channel_at_requested_size():
    data = load_dataset("digits", image_size=24)
    images = data.train.tensors[0]
    assert images.shape[1:] == (3, 24, 24) and data.input_shape == [3, 24, 24]
    assert abs(float(images.mean())) < 0.05 and abs(float(images.std()) - 1) < 0.05
    assert data.num_classes == 10 and data.labels == [str(i) for i in range(10)]


def test_imagefolder_reads_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert data.labels == ["cat", "dog"]
    assert len(data.train) + len(data.val) + len(data.test) == 20
    image, label = data.test[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)


@pytest.mark.parametrize("name", ["mnist", "imagefolder", "digits:extra", ""])
def test_unknown_dataset_names_the_allowed_set(name):
    with pytest.raises(UsageError, match="Choose one of: digits, cifar10, imagefolder:PATH, fake"):
        load_dataset(name)


def test_missing_imagefolder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_calibration_batches_are_seeded_and_sized():
    data = load_dataset("digits", image_size=16)
    first = calibration_batches(data.train, 8, 3, seed=1)
    again = calibration_batches(data.train, 8, 3, seed=1)
    assert [b.shape for b in first] == [(8, 3, 16, 16)] * 3
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(UsageError, match="at least one batch"):
        calibration_batches(data.train, 8, 0)


def test_loaded_splits_know_their_seed():
    assert load_dataset("digits", image_size=8, seed=3).split_seed == 3


def test_split_seed_defaults_to_the_models_own_so_its_test_set_stays_unseen():
    trained_on_3 = Manifest(num_classes=10, input_shape=[3, 32, 32], split_seed=3)
    # --seed moves training randomness only; the split follows the model unless --split-seed says otherwise.
    assert split_seed(common_parser().parse_args(["--seed", "5"]), trained_on_3) == 3
    assert split_seed(common_parser().parse_args(["--split-seed", "1"]), trained_on_3) == 1
    assert split_seed(common_parser().parse_args([]), Manifest(num_classes=10, input_shape=[3, 32, 32])) == 0
    assert split_seed(common_parser().parse_args([])) == 0
