"""The images the manifests run against PR2's docker-compose file: one service image, one Kafka image."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from PR1_horizontal_pod_autoscaling.manifest_checks.documents import Doc, pod_template_spec

#: ``${VAR:-default}`` (or ``${VAR-default}``): what compose uses when VAR is unset, as a user with a registry runs it.
COMPOSE_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")


def image_default(image: object) -> str:
    """An ``image:`` value with every variable replaced by its default (the upstream image)."""
    return COMPOSE_DEFAULT.sub(lambda match: match.group(1), str(image or ""))


def compose_image(compose_file: Path) -> tuple[str | None, list[str]]:
    """The image the compose file builds/uses for the API and the worker (one image for both)."""
    if not compose_file.exists():
        return None, []
    data = yaml.safe_load(compose_file.read_text()) or {}
    images = {name: image_default(svc.get("image")) for name, svc in (data.get("services") or {}).items()
              if isinstance(svc, dict) and ("build" in svc or "inference" in image_default(svc.get("image")))}
    distinct = {i for i in images.values() if i}
    if len(distinct) != 1:
        return None, [f"{compose_file.name}: expected one image for the service containers, found {images}"]
    return distinct.pop(), []


def check_kafka_image(docs: Sequence[Doc], compose_file: Path) -> list[str]:
    """The dev broker runs the same apache/kafka image as PR2's compose file."""
    if not compose_file.exists():
        return []
    data = yaml.safe_load(compose_file.read_text()) or {}
    wanted = {image_default(svc.get("image")) for svc in (data.get("services") or {}).values()
              if isinstance(svc, dict) and image_default(svc.get("image")).startswith("apache/kafka")}
    problems = []
    for doc in docs:
        for c in pod_template_spec(doc).get("containers") or []:
            image = str(c.get("image", ""))
            if image.startswith("apache/kafka") and wanted and image not in wanted:
                problems.append(f"{doc.label()}: image {image!r} != docker-compose.yaml's {', '.join(sorted(wanted))}")
    return problems
