"""Bare state_dicts: the torchvision architecture and class count are read from the parameters."""

from __future__ import annotations

import pytest
import torch

from modelops.arch_inference import infer_architecture, match_architectures, normalise_state_dict
from modelops.artifact import load_artifact, load_module, read_manifest
from modelops.cli import common_parser, load_options, run_cli
from modelops.errors import ArtifactError
from modelops.load_options import LoadOptions
from modelops.models import create_model
from modelops.tv_compat import torchvision


def meta_state_dict(arch: str, num_classes: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes).state_dict()


@pytest.mark.parametrize(("arch", "num_classes"), [
    ("resnet18", 10), ("resnet50", 1000), ("mobilenet_v3_small", 7), ("mobilenet_v3_large", 1000),
    ("efficientnet_b0", 5), ("convnext_tiny", 4), ("vit_b_16", 3),
])
def test_torchvision_families_are_identified_with_their_class_count(arch, num_classes):
    found = infer_architecture(meta_state_dict(arch, num_classes), "model.pt")
    assert (found.arch, found.num_classes, found.exact) == (arch, num_classes, True)


def test_a_state_dict_that_fits_no_architecture_says_so():
    with pytest.raises(ArtifactError, match="matches no torchvision classification architecture"):
        infer_architecture({"encoder.weight": torch.zeros(4, 4), "head.weight": torch.zeros(2, 4)}, "x.pt")


def test_a_state_dict_that_fits_several_asks_for_arch():
    # Widths changed (as structured pruning leaves them): resnet50, resnext50 and wide_resnet50 share names and
    # kernel sizes, so only --arch can tell them apart.
    state_dict = {k: (torch.zeros(v.shape[0] // 2, *v.shape[1:]) if k.endswith("conv2.weight") else v)
                  for k, v in meta_state_dict("resnet50", 10).items()}
    found = {f.arch for f in match_architectures(state_dict)}
    assert {"resnet50", "resnext50_32x4d", "wide_resnet50_2"} <= found
    with pytest.raises(ArtifactError, match=r"fits several architectures \(.*resnet50.*\): pass --arch NAME"):
        infer_architecture(state_dict, "pruned.pt")


def test_trainer_checkpoints_are_unwrapped():
    inner = {"module.fc.weight": torch.zeros(2, 3)}
    assert list(normalise_state_dict({"model": inner, "epoch": 3})) == ["fc.weight"]


@pytest.fixture
def bare_resnet18(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", 6).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_bare_state_dict_loads_with_what_was_inferred_in_its_manifest(bare_resnet18):
    model, path = bare_resnet18
    loaded, manifest = load_module(path)
    assert (manifest.arch, manifest.num_classes, manifest.input_shape) == ("resnet18", 6, [3, 224, 224])
    assert manifest.inferred["arch"] == "resnet18" and "bare state_dict" in manifest.inferred["from"]
    batch = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(batch), model(batch))
    derived = manifest.derive(parent_path=path, transform={"kind": "pruning"})
    assert derived.inferred["arch"] == "resnet18"  # every output made from it carries what was inferred


def test_arch_flag_is_used_and_a_wrong_one_says_what_to_pass(bare_resnet18, capsys):
    _, path = bare_resnet18
    assert load_artifact(path, LoadOptions(arch="resnet18")).manifest.arch == "resnet18"
    with pytest.raises(ArtifactError, match=r"do not fit architecture 'resnet34'.*--arch"):
        load_module(path, LoadOptions(arch="resnet34"))

    def main(args):
        load_module(path, load_options(args))  # a script passes its --arch down explicitly

    assert run_cli(main, common_parser(), ["--arch", "resnet34"]) == 2
    assert "resnet34" in capsys.readouterr().err
    load_module(path)  # the --arch of the last run does not outlive it


def test_a_manifest_beside_a_bare_state_dict_names_its_arch(bare_resnet18):
    from modelops.artifact import Manifest, write_manifest

    _, path = bare_resnet18
    write_manifest(path, Manifest(arch="resnet18", num_classes=6, input_shape=[3, 32, 32]))
    _, manifest = load_module(path)
    assert manifest.input_shape == [3, 32, 32] and not manifest.inferred
    assert read_manifest(path).arch == "resnet18"
