"""Tell which torchvision classification architecture a bare ``state_dict`` belongs to.

A file saved with ``torch.save(model.state_dict(), path)`` holds parameter names and shapes but no
architecture name. Candidates are built on the meta device (no memory, no weight init cost) and compared
with the saved tensors: first one model per torchvision family (``resnet``, ``mobilenetv3``, ...) on the
top-level layer names, then every member of the families that fit on all names and shapes. The classifier's
output size is free (it gives the class count); a structurally pruned file matches on names and kernel sizes.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch

from modelops.errors import ArtifactError, UsageError
from modelops.models import classifier_layer, list_classification_archs
from modelops.tv_compat import torchvision

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ArchSignature:
    """What a candidate architecture's state_dict looks like."""

    arch: str
    shapes: dict[str, tuple[int, ...]]
    head_keys: tuple[str, ...]
    head_weight_key: str


@dataclass(frozen=True)
class InferredArch:
    """The result of a match: the architecture, its class count, and how it was found."""

    arch: str
    num_classes: int
    exact: bool

    def as_manifest_entry(self) -> dict[str, object]:
        how = "parameter names and shapes" if self.exact else "parameter names and kernel sizes (pruned widths)"
        return {"arch": self.arch, "num_classes": self.num_classes, "from": f"matched {how} of a bare state_dict"}


def _family(arch: str) -> str:
    return torchvision.models.get_model_builder(arch).__module__.rsplit(".", 1)[-1]


@cache
def _families() -> dict[str, tuple[str, ...]]:
    families: dict[str, list[str]] = defaultdict(list)
    for arch in list_classification_archs():
        families[_family(arch)].append(arch)
    return {family: tuple(archs) for family, archs in families.items()}


@cache
def signature(arch: str) -> ArchSignature | None:
    """The state_dict shapes of ``arch`` built on the meta device (None if it cannot be built there)."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(arch, weights=None)
    except Exception as exc:  # a few builders copy tensor data during init, which meta tensors cannot do
        logger.debug("cannot build %s on the meta device: %s", arch, exc)
        return None
    try:
        head_name, _ = classifier_layer(model)
    except UsageError:  # SqueezeNet ends in a convolution: no Linear head to read a class count from
        return None
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    head_keys = tuple(k for k in (f"{head_name}.weight", f"{head_name}.bias") if k in shapes)
    return ArchSignature(arch, shapes, head_keys, f"{head_name}.weight")


def _top_level(keys: object) -> set[str]:
    return {str(key).split(".", 1)[0] for key in keys}  # type: ignore[attr-defined]


def _fits(sig: ArchSignature, saved: Mapping[str, tuple[int, ...]], *, exact: bool) -> bool:
    if set(sig.shapes) != set(saved):
        return False
    for key, shape in sig.shapes.items():
        got = saved[key]
        if key in sig.head_keys:
            if len(got) != len(shape) or (len(shape) == 2 and got[1] != shape[1] and exact):
                return False
        elif (exact and got != shape) or len(got) != len(shape) or got[2:] != shape[2:]:
            return False
    return True


def _representative(archs: tuple[str, ...]) -> set[str]:
    """The state_dict keys of the first member of a family that builds on meta (empty if none does)."""
    for arch in archs:
        sig = signature(arch)
        if sig is not None:
            return set(sig.shapes)
    return set()


def normalise_state_dict(obj: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as saved by common trainers: ``{"model": sd}``, ``module.`` prefixes."""
    for wrapper in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def match_architectures(state_dict: Mapping[str, torch.Tensor]) -> list[InferredArch]:
    """Every torchvision classification architecture ``state_dict`` fits (exact fits first, if any)."""
    saved = {key: tuple(value.shape) for key, value in state_dict.items()}
    top = _top_level(saved)
    families = [archs for archs in _families().values() if _top_level(_representative(archs)) == top]
    candidates = [sig for archs in families for a in archs if (sig := signature(a)) is not None]
    for exact in (True, False):
        found = [InferredArch(sig.arch, int(saved[sig.head_weight_key][0]), exact)
                 for sig in candidates if _fits(sig, saved, exact=exact)]
        if found:
            return found
    return []


def infer_architecture(state_dict: Mapping[str, torch.Tensor], source: object) -> InferredArch:
    """The one architecture ``state_dict`` fits, or an :class:`ArtifactError` that says what to pass."""
    found = match_architectures(state_dict)
    if len(found) == 1:
        logger.info("%s: a bare state_dict; identified as %s with %d classes from its parameters",
                    source, found[0].arch, found[0].num_classes)
        return found[0]
    if not found:
        raise ArtifactError(
            f"{source} is a bare state_dict that matches no torchvision classification architecture by its "
            "parameter names and shapes; save the model as TorchScript, ONNX or ExportedProgram instead, or "
            "pass --trust-pickle with a whole pickled module"
        )
    names = ", ".join(f.arch for f in found)
    raise ArtifactError(f"{source} is a bare state_dict that fits several architectures ({names}): pass --arch NAME "
                        "(arch: NAME in a model registry entry)")
