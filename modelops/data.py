"""Datasets every part speaks: ``digits`` (offline default), ``cifar10``, ``imagefolder:PATH``, ``fake``.

Each dataset yields 3-channel float images normalised with the dataset's mean and std, split
deterministically (seeded, stratified where labels allow) into train / val / test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from modelops.errors import UsageError
from modelops.preprocessing import IMAGENET_MEAN, IMAGENET_STD, image_transform, preset
from modelops.tv_compat import torchvision

logger = logging.getLogger(__name__)

DATASET_CHOICES = ("digits", "cifar10", "imagefolder:PATH", "fake")
SPLITS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = {"digits": 32, "cifar10": 32, "imagefolder": 224, "fake": 224}
# Fractions of the whole dataset held out for validation and test.
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2


@dataclass
class DatasetSplits:
    """The three splits of one dataset plus what a model needs to know to consume it."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    extra: dict = field(default_factory=dict)
    split_seed: int = 0
    resize: int | None = None
    preprocessing_name: str | None = None

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise UsageError(f"Unknown split {name!r}. Choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def input_shape(self) -> list[int]:
        return [3, self.image_size, self.image_size]

    @property
    def preprocessing(self) -> dict:
        """What the manifest records and :mod:`modelops.preprocessing` applies when serving."""
        spec: dict = {"size": self.image_size, "mean": self.mean, "std": self.std, "channels": 3}
        if self.resize:
            spec["resize"] = self.resize
        if self.preprocessing_name:
            spec["name"] = self.preprocessing_name
        return spec


class AugmentedDataset(Dataset):
    """Applies a per-sample tensor transform on top of a tensor dataset (training augmentation)."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Deterministic, stratified train/val/test indices."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels) if len(labels) else np.array([])
    stratify = labels if len(counts) and counts.min() >= 5 else None
    rest, test = train_test_split(indices, test_size=TEST_FRACTION, random_state=seed, stratify=stratify)
    rest_labels = labels[rest] if stratify is not None else None
    train, val = train_test_split(
        rest, test_size=VAL_FRACTION / (1 - TEST_FRACTION), random_state=seed, stratify=rest_labels
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _tensor_splits(
    name: str, images: torch.Tensor, labels: np.ndarray, label_names: list[str], image_size: int, seed: int
) -> DatasetSplits:
    """Resize, normalise with train-split statistics and split an in-memory image tensor (N, C, H, W)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    idx = split_indices(labels, seed)
    train_images = images[idx["train"]]
    mean = train_images.mean(dim=(0, 2, 3))
    std = train_images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    images = ((images - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()
    targets = torch.as_tensor(labels, dtype=torch.long)
    parts = {s: TensorDataset(images[i], targets[i]) for s, i in idx.items()}
    return DatasetSplits(
        name=name, **parts, num_classes=len(label_names), labels=label_names, image_size=image_size,
        mean=[round(float(m), 6) for m in mean], std=[round(float(s), 6) for s in std],
    )


def _load_digits(image_size: int, seed: int) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    return _tensor_splits("digits", images, labels, [str(t) for t in bunch.target_names], image_size, seed)


def _load_fake(image_size: int, seed: int, num_samples: int = 256, num_classes: int = 10) -> DatasetSplits:
    """Random images and labels (with many classes the split is not stratified: too few of each)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num_samples, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator).numpy()
    return _tensor_splits("fake", images, labels, [f"class_{i}" for i in range(num_classes)], image_size, seed)


def _load_cifar10(image_size: int, seed: int, root: Path) -> DatasetSplits:
    try:
        train = torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(root=str(root), train=False, download=True)
    except Exception as exc:  # URLError, OSError, checksum errors...
        raise UsageError(
            f"Could not download CIFAR-10 into {root} ({exc}). It needs network access once; "
            "offline, use --dataset digits."
        ) from exc
    data = np.concatenate([train.data, test.data])  # (N, 32, 32, 3) uint8
    images = torch.as_tensor(data).permute(0, 3, 1, 2).float() / 255.0
    labels = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)]).astype(np.int64)
    return _tensor_splits("cifar10", images, labels, list(train.classes), image_size, seed)


class _ImageFolderView(Dataset):
    """An ImageFolder read lazily, with :func:`modelops.preprocessing.image_transform` applied per image."""

    def __init__(self, folder, indices: np.ndarray, transform) -> None:
        self.folder = folder
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.folder[int(self.indices[i])]
        return self.transform(image), label


def read_labels(path: str | Path, num_classes: int | None = None) -> list[str]:
    """Class names from a text file, one a line in class-index order (``--labels FILE``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--labels {path} is not a file (expected one class name a line)")
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if num_classes is not None and len(labels) != num_classes:
        raise UsageError(f"--labels {path} names {len(labels)} classes but there are {num_classes}")
    return labels


def _load_imagefolder(path: str, image_size: int, seed: int, preprocessing: str | None) -> DatasetSplits:
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"ImageFolder path {path!r} is not a directory (expected ROOT/<class>/<image files>)")
    try:
        folder = torchvision.datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise UsageError(f"Cannot read ImageFolder {path!r}: {exc}") from exc
    labels = np.asarray(folder.targets, dtype=np.int64)
    idx = split_indices(labels, seed)
    # ImageNet statistics: the usual choice for photos and for pretrained torchvision weights.
    spec = preset(preprocessing, image_size) if preprocessing else {
        "resize": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    transform = image_transform(spec, [3, image_size, image_size])
    parts = {s: _ImageFolderView(folder, i, transform) for s, i in idx.items()}
    return DatasetSplits(
        name=f"imagefolder:{path}", **parts, num_classes=len(folder.classes), labels=list(folder.classes),
        image_size=image_size, mean=spec["mean"], std=spec["std"], resize=spec["resize"],
        preprocessing_name=preprocessing,
    )


def load_dataset(
    name: str, *, image_size: int | None = None, seed: int = 0, data_dir: str | Path = "data",
    num_classes: int | None = None, preprocessing: str | None = None, labels_file: str | Path | None = None,
) -> DatasetSplits:
    """Load a dataset by its ``--dataset`` name.

    Args:
        name: ``digits``, ``cifar10``, ``imagefolder:PATH`` or ``fake``.
        image_size: side of the square model input (default: the dataset's own, 32 for digits; 224 with
            ``preprocessing="imagenet"``).
        seed: split seed; the same seed always gives the same split.
        data_dir: where downloadable datasets are cached.
        num_classes: class count of ``fake`` (default 10; pass the model's so any head fits).
        preprocessing: a preset of :mod:`modelops.preprocessing` for ``imagefolder`` (``imagenet``).
        labels_file: class names, one a line, replacing the dataset's own (``--labels``).
    """
    kind, _, arg = name.partition(":")
    if kind not in DEFAULT_IMAGE_SIZE or (kind == "imagefolder") != bool(arg):
        raise UsageError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASET_CHOICES)}")
    if preprocessing is not None and kind != "imagefolder":
        raise UsageError(f"--preprocessing {preprocessing} applies to image files (--dataset imagefolder:PATH), "
                         f"not to {kind}")
    size = image_size or DEFAULT_IMAGE_SIZE[kind]
    if size < 8:
        raise UsageError(f"Image size {size} is too small (at least 8)")
    if kind == "digits":
        data = _load_digits(size, seed)
    elif kind == "fake":
        data = _load_fake(size, seed, num_classes=num_classes or 10)
    elif kind == "cifar10":
        data = _load_cifar10(size, seed, Path(data_dir))
    else:
        data = _load_imagefolder(arg, size, seed, preprocessing)
    data.split_seed = seed
    if labels_file is not None:
        data.labels = read_labels(labels_file, data.num_classes)
    return data


def train_augmentation(image_size: int):
    """Light geometric augmentation that keeps digits and small images legible."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, workers: int = 0,
    limit: int | None = None,
) -> DataLoader:
    """A DataLoader; ``limit`` keeps only the first N samples (quick runs, tests)."""
    if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(limit))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers)


def calibration_batches(dataset: Dataset, batch_size: int, num_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """A fixed, seeded random subset of ``dataset`` as input batches (for quantization calibration)."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0 or num_batches < 1:
        raise UsageError("Calibration needs at least one batch of real data; got an empty dataset or 0 batches")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: batch_size * num_batches]
    images = torch.stack([dataset[int(i)][0] for i in order])
    return list(images.split(batch_size))
