"""Manifests as documents: loading, applying in order, and the queries every family of checks shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

YAMLLINT_CONFIG = ".yamllint.yaml"

#: libyaml's loader when PyYAML was built with it (several times faster), else the pure-Python one.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Doc:
    """One YAML document and where it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.body.get("metadata") or {}).get("namespace", ""))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def spec(self) -> dict[str, Any]:
        return self.body.get("spec") or {}

    def label(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


@dataclass
class Report:
    """Problems (each makes the run fail) and notes (what was checked or skipped, and why)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problems: Iterable[str], prefix: str = "") -> None:
        for problem in problems:
            text = f"[{prefix}] {problem}" if prefix else problem
            if problem not in {p.split("] ", 1)[-1] for p in self.problems}:
                self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "notes": self.notes}


def manifest_files(root: Path) -> list[Path]:
    """Every manifest in ``root`` (kustomization.yaml and the yamllint config are not manifests)."""
    return sorted(p for p in root.glob("*.yaml") if p.name not in ("kustomization.yaml", YAMLLINT_CONFIG))


def load_docs(path: Path) -> list[Doc]:
    return load_text_docs(path.read_text(), path.name)


def load_text_docs(text: str, source: str) -> list[Doc]:
    return [Doc(source, d) for d in yaml.load_all(text, Loader=SafeLoader) if d]


def apply_in_order(docs: Iterable[Doc]) -> list[Doc]:
    """The objects left after applying ``docs`` in order (same kind/namespace/name: the last one wins)."""
    state: dict[tuple[str, str, str], Doc] = {}
    for doc in docs:
        state.pop(doc.key, None)
        state[doc.key] = doc
    return list(state.values())


def pod_template_spec(doc: Doc) -> dict[str, Any]:
    """``spec.template.spec`` of a workload ({} when there is none)."""
    return (doc.spec.get("template") or {}).get("spec") or {}


def pod_specs(docs: Sequence[Doc], kinds: tuple[str, ...] = ("Deployment", "Job")) -> list[tuple[Doc, dict[str, Any],
                                                                                        dict[str, str]]]:
    """(doc, pod spec, pod labels) for workloads of ``kinds`` and bare Pods."""
    out = []
    for doc in docs:
        if doc.kind in kinds:
            template = doc.spec.get("template") or {}
            out.append((doc, template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}))
        elif doc.kind == "Pod":
            out.append((doc, doc.spec, (doc.body.get("metadata") or {}).get("labels") or {}))
    return out


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels``/``matchExpressions``, or a Service's plain map) picks ``labels``."""
    if not selector:
        return False
    match_labels = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def port_of(container: dict[str, Any], port: Any) -> dict[str, Any] | None:
    """The container's port entry that ``port`` (a name or a number) refers to."""
    for p in container.get("ports") or []:
        if port == p.get("name") or (isinstance(port, int) and port == p.get("containerPort")):
            return p
    return None


def container_command(container: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (container.get("command") or []) + (container.get("args") or []))


def is_worker(doc: Doc) -> bool:
    """The Deployment that runs PR2's model worker (a Kafka consumer of the requests topic)."""
    return any("model_worker" in container_command(c) for c in pod_template_spec(doc).get("containers") or [])
