"""What ``kubectl apply`` would check on a server: strict schemas, plus yamllint and ``kubectl kustomize``.

Every manifest validates in strict mode against the official schemas bundled in ``kubernetes-validate`` for
several Kubernetes versions; a kind without a schema is a failure (the library only warns), except the two CRDs
used here (KEDA ScaledObject, Prometheus Operator ServiceMonitor), which are checked against the JSON schemas in
``schemas/`` (only the fields these manifests use, no unknown field allowed).
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import (
    InvalidSchemaError,
    SchemaNotFoundError,
    VersionNotSupportedError,
)

from modelops.errors import UsageError
from PR1_horizontal_pod_autoscaling.manifest_checks.documents import Doc, load_text_docs

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

#: CRDs without an upstream schema in kubernetes-validate: (apiVersion, kind) -> our schema file.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


def check_versions(versions: Sequence[str]) -> list[str]:
    """Normalised ``major.minor`` versions; a version kubernetes-validate does not ship is a usage error."""
    supported = [v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()]
    out = []
    for version in versions:
        short = ".".join(version.lstrip("v").split(".")[:2])
        if short not in supported:
            raise UsageError(f"Unsupported Kubernetes version {version!r}. Choose one of: {', '.join(supported)}")
        out.append(short)
    return out


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """A validator for one of the CRDs in ``CRD_SCHEMAS``, or None for any other kind."""
    name = CRD_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    schema = json.loads((SCHEMA_DIR / name).read_text())
    return jsonschema.Draft202012Validator(schema)


def check_schema(doc: Doc, versions: Sequence[str]) -> list[str]:
    """Strict schema validation; a kind with no schema anywhere is a problem, never a warning."""
    body = doc.body
    if not isinstance(body, dict) or "apiVersion" not in body or "kind" not in body:
        return [f"{doc.source}: a document without apiVersion/kind"]
    crd = crd_validator(body["apiVersion"], body["kind"])
    if crd is not None:
        return [f"{doc.label()}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message} (schemas/)"
                for e in crd.iter_errors(body)]
    text = json.dumps(body, sort_keys=True)
    return [f"{doc.label()}: {error}" for version in versions if (error := k8s_schema_error(text, version))]


@functools.lru_cache(maxsize=4096)
def k8s_schema_error(doc_json: str, version: str) -> str | None:
    """kubernetes-validate in strict mode; cached by content because it re-reads its schemas on every call."""
    try:
        kubernetes_validate.validate(json.loads(doc_json), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        return f"does not validate against Kubernetes {exc.version} (strict): {path}: {exc.message}"
    except SchemaNotFoundError as exc:
        return f"unknown kind: {exc.message}"
    except (InvalidSchemaError, VersionNotSupportedError) as exc:
        return f"cannot validate: {getattr(exc, 'message', exc)}"
    return None


def check_yamllint(paths: Sequence[Path], config: Path) -> list[str]:
    """yamllint with ``config``; like ``yamllint --strict``, warnings are problems too."""
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(config))
    problems = []
    for path in paths:
        for p in linter.run(path.read_text(), conf, str(path)):
            problems.append(f"{path.name}:{p.line}:{p.column}: yamllint {p.level}: {p.desc} ({p.rule})")
    return problems


def render_kustomization(root: Path, kubectl: str) -> tuple[list[Doc], list[str]]:
    """The documents ``kubectl kustomize root`` renders, or a problem naming its error."""
    proc = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return [], [f"kubectl kustomize {root.name} failed: {proc.stderr.strip()[:500]}"]
    return load_text_docs(proc.stdout, "kustomize"), []
