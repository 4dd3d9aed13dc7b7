"""The model registry (YAML): the name a request gives -> the artifact served under it, its fallbacks and its
batching settings, and the model a request that names none gets (``default_model``).

The API reads each entry's manifest to validate inputs (no model load when the file has one; for a file without
one, the manifest the loader works out); the worker loads the artifact with
:func:`modelops.artifact.load_artifact`. Decoding a request's input with that manifest is :mod:`.codec`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from modelops.artifact import Manifest, manifest_path, read_manifest
from modelops.errors import ArtifactError, UsageError

logger = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """One registry entry.

    A fallback serves under this name only when its manifest declares the same input shape and labels as
    the entry (``input_shape`` and ``labels`` here, else the artifact's own manifest): a client asking for
    this name never gets a model that reads its input differently or names other classes.
    """

    name: str
    artifact: Path
    fallbacks: list[Path] = Field(default_factory=list)
    input_shape: list[int] | None = Field(None, description="what a fallback must declare, (C, H, W)")
    labels: list[str] | None = Field(None, description="what a fallback must declare, in class-index order")
    arch: str | None = Field(None, description="torchvision architecture of a bare state_dict artifact, where its "
                                                "parameter names and shapes fit several")
    trust_pickle: bool = Field(False, description="load a whole pickled module (runs the code it holds)")
    max_batch_size: int | None = Field(None, ge=1)
    max_batch_delay_ms: float | None = Field(None, ge=0)
    description: str = ""

    def resolve(self) -> Path | None:
        """The artifact, else the first fallback that declares the same inputs and labels; None if neither."""
        return self._resolve()[0]

    def unavailable_reason(self) -> str | None:
        """Why nothing is served under this name (names the missing path), or None when something is."""
        return self._resolve()[1]

    def public_reason(self, reason: str) -> str:
        """``reason`` with this entry's paths reduced to their file names, for answers that leave the server."""
        for path in sorted({self.artifact, *self.fallbacks}, key=lambda p: len(str(p)), reverse=True):
            reason = reason.replace(str(path), path.name)
        return reason

    def _resolve(self) -> tuple[Path | None, str | None]:
        if self.artifact.is_file():
            return self.artifact, None
        reason = f"artifact {self.artifact} of model {self.name!r} does not exist"
        if not self.fallbacks:
            return None, reason
        expected = self._expected()
        if expected is None:
            return None, (f"{reason}; its fallbacks are not used because the entry declares no input_shape and "
                          "labels to check them against")
        for path in self.fallbacks:
            manifest = read_manifest(path) if path.is_file() else None
            if manifest is not None and _declares(manifest) == expected:
                logger.warning("model %r: %s; serving fallback %s (same input shape and labels)", self.name,
                               reason, path)
                return path, None
        return None, f"{reason}, and no fallback declares its input shape {expected[0]} and labels"

    def _expected(self) -> tuple[list[int], list[str]] | None:
        primary = read_manifest(self.artifact)  # a manifest can outlive its artifact file
        if self.input_shape is not None and self.labels is not None:
            return list(self.input_shape), list(self.labels)
        return _declares(primary) if primary is not None else None


def _declares(manifest: Manifest) -> tuple[list[int], list[str]]:
    labels = list(manifest.labels) or [str(i) for i in range(manifest.num_classes)]
    return list(manifest.input_shape), labels


class Registry(BaseModel):
    """The models served by name, and ``default_model``: the one a request that names none gets."""

    default_model: str
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _default_is_a_model(self) -> Registry:
        check_default_model(self.default_model, self.models)
        return self

    def get(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UsageError(f"Unknown model {name!r}. Choose one of: {', '.join(sorted(self.models))}")
        return self.models[name]


def check_default_model(default_model: str, names: Iterable[str]) -> None:
    """Raises UsageError unless ``default_model`` is one of the registry's model names."""
    known = sorted(names)
    if default_model not in known:
        raise UsageError(f"default_model {default_model!r} is not one of its models: {', '.join(known)}")


def load_registry(path: str | Path) -> Registry:
    """Read the registry YAML; relative artifact paths are resolved against the file's folder."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model registry {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().parent
    models = {}
    for name, entry in (raw.get("models") or {}).items():
        entry = dict(entry or {})
        entry["artifact"] = base / entry["artifact"]
        entry["fallbacks"] = [base / p for p in entry.get("fallbacks", [])]
        try:
            models[name] = ModelSpec(name=name, **entry)
        except ValidationError as exc:
            raise UsageError(f"registry {path}: model {name!r} is invalid: {exc}") from exc
    if not models:
        raise UsageError(f"registry {path} lists no models")
    default = raw.get("default_model") or next(iter(models))
    try:
        check_default_model(default, models)
    except UsageError as exc:
        raise UsageError(f"registry {path}: {exc}") from exc
    return Registry(default_model=default, models=models)


def write_registry(path: str | Path, models: Mapping[str, str | Path | Mapping[str, Any]],
                   default_model: str | None = None) -> Path:
    """Write a registry YAML that :func:`load_registry` reads; artifact paths are written absolute.

    Args:
        path: the YAML file to write.
        models: name -> artifact path, or name -> entry (``artifact`` plus any :class:`ModelSpec` field).
        default_model: the model served when a request names none (default: the first).
    """
    default_model = default_model or next(iter(models))
    check_default_model(default_model, models)
    entries = {}
    for name, entry in models.items():
        entry = dict(entry) if isinstance(entry, Mapping) else {"artifact": entry}
        entry["artifact"] = str(Path(entry["artifact"]).resolve())
        entries[name] = entry
    path = Path(path)
    path.write_text(yaml.safe_dump({"default_model": default_model, "models": entries}, sort_keys=False))
    return path


def model_manifest(spec: ModelSpec) -> tuple[Path, Manifest]:
    """The artifact path and manifest the registry entry points at: the manifest beside the artifact, else the one
    the worker's loader works out for it (:func:`derived_manifest`).

    Raises:
        FileNotFoundError: no artifact to serve (the message names the path).
        ArtifactError: the artifact has no manifest and the loader cannot work one out (the message says why).
    """
    path, reason = spec._resolve()
    if path is None:
        raise FileNotFoundError(reason)
    manifest = read_manifest(path)
    return path, manifest if manifest is not None else derived_manifest(path, spec)


def derived_manifest(path: Path, spec: ModelSpec) -> Manifest:
    """The manifest of a file that has none, as the worker's loader sees it: the entry's ``arch`` (else the one
    its parameters identify) and the head's class count for a bare state_dict, the input shape the file declares
    or a forward pass accepts. This builds the model once; callers cache the result."""
    # Imported here: only a file without a manifest needs the loader's model-building side.
    from modelops.artifact import load_artifact
    from modelops.load_options import LoadOptions

    options = LoadOptions(arch=spec.arch, trust_pickle=spec.trust_pickle, compile=False, threads=1)
    try:
        return load_artifact(path, options).manifest
    except Exception as exc:  # any failure to build or run the model means the same here: nothing to serve
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"artifact {path} has no manifest {manifest_path(path).name} and the loader cannot "
                            f"work one out: {first}") from exc
