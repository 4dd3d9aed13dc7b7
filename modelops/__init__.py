"""Shared core for PR2, PR3 and PR4: model artifacts, datasets, evaluation, training and timing.

Importing it makes torchvision importable on CPU-only torch builds (see ``modelops.tv_compat``).
"""

from modelops import tv_compat as _tv_compat  # noqa: F401  (must run before any torchvision import)
from modelops.artifact import Manifest, Predictor, load_artifact, load_module, read_manifest, save_artifact
from modelops.errors import ArtifactError, UsageError

__all__ = [
    "ArtifactError",
    "Manifest",
    "Predictor",
    "UsageError",
    "load_artifact",
    "load_module",
    "read_manifest",
    "save_artifact",
]
