"""The torchvision compat shim: patches only when the C++ ops are missing, and is a no-op otherwise."""

from __future__ import annotations

import subprocess
import sys

import torch

from modelops import tv_compat


def test_torchvision_models_transforms_datasets_import():
    tv = tv_compat.import_torchvision()
    assert tv.models.resnet18(num_classes=3).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    from torchvision.transforms import v2

    assert v2.Resize(8)(torch.zeros(3, 16, 16)).shape == (3, 8, 8)
    assert hasattr(tv.datasets, "ImageFolder")


def test_patch_applies_only_when_the_real_ops_did_not_load():
    real_ops_loaded = not tv_compat.patched
    op = torch.ops.torchvision.nms
    dets, scores = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0])
    if real_ops_loaded:
        assert op(dets, scores, 0.5).tolist() == [0]
    else:
        try:
            op(dets, scores, 0.5)
        except RuntimeError as exc:
            assert "torchvision's C++ ops did not load" in str(exc)
        else:
            raise AssertionError("placeholder nms must raise")


def test_noop_when_torchvision_already_imports():
    # In a fresh process where torchvision imports (after the shim defined the ops once), a second call
    # must return the same module without redefining anything.
    code = (
        "from modelops import tv_compat; import torchvision; lib = tv_compat._compat_library; "
        "assert tv_compat.import_torchvision() is torchvision; assert tv_compat._compat_library is lib; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
