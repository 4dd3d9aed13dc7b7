"""Session fixtures: one tiny trained model on the bundled digits data, reused by every suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelops.artifact import Manifest, save_artifact
from modelops.data import load_dataset, make_loader
from modelops.evaluate import evaluate
from modelops.models import count_macs, count_parameters, create_model
from modelops.training import TrainingConfig, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = 32


def train_tiny(arch: str, out_dir: Path, epochs: int = 3) -> Path:
    """A ``arch`` classifier trained for a few epochs on digits, saved as a state_dict artifact."""
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=TINY_IMAGE_SIZE, seed=0)
    model = create_model(arch, data.num_classes)
    config = TrainingConfig(epochs=epochs, lr=0.05, opt="sgd", momentum=0.9, weight_decay=5e-4,
                            lr_scheduler="cosine", lr_step_size=5, lr_gamma=0.1, label_smoothing=0.0,
                            patience=None, bf16=False, resume=None, device="cpu")
    fit(model, make_loader(data.train, 64, shuffle=True), make_loader(data.val, 256), config,
        output_dir=out_dir / f"run_{arch}", progress=False)
    accuracy = evaluate(model, make_loader(data.test, 256))["accuracy"]
    manifest = Manifest(arch=arch, num_classes=data.num_classes, input_shape=data.input_shape,
                        preprocessing=data.preprocessing, labels=data.labels, dataset="digits", split_seed=0,
                        metrics={"accuracy": accuracy, "params": count_parameters(model),
                                 "macs": count_macs(model, data.input_shape)})
    path = out_dir / f"{arch}.pt"
    save_artifact(model, path, manifest)
    return path


def tiny_classifier(side: int = 16) -> torch.nn.Module:
    """A seeded 10-class net of a few hundred parameters for ``side`` x ``side`` inputs, in eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()


@pytest.fixture(scope="session")
def digits_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 trained 3 epochs on digits at 32x32 (about 95% test accuracy); a state_dict artifact."""
    return train_tiny("resnet18", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine idle OpenMP threads spin and slow training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_data():
    return load_dataset("digits", image_size=TINY_IMAGE_SIZE, seed=0)
