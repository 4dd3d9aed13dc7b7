"""Offline checks of the PR1 manifests against Kubernetes' schemas and against PR2's code.

    python PR1_horizontal_pod_autoscaling/validate_manifests.py            # report, exit 1 on problems
    python PR1_horizontal_pod_autoscaling/validate_manifests.py --json     # the same as JSON
    python PR1_horizontal_pod_autoscaling/validate_manifests.py --metrics-url http://127.0.0.1:8000/metrics \
        --metrics-url http://127.0.0.1:9100/metrics                        # metric names from running services

No cluster is needed, so every check a `kubectl apply` would make on a server is made here from the same
sources of truth (the checks themselves live in ``manifest_checks/``, one module per family):

- every manifest validates in strict mode against the official schemas for several Kubernetes versions, the
  two CRDs used here against the JSON schemas in ``schemas/``; ``yamllint`` (``.yamllint.yaml``) and
  ``kubectl kustomize`` render;
- the manifests agree with each other and with PR2's code: selectors and labels, Service target ports,
  probe ports, every autoscaler's target, one autoscaler per Deployment, the image of the compose file,
  the settings module (topics, group, partitions, ports, the ConfigMap's INFERENCE_* keys), the model
  registry format, and every metric the adapter rules, HPAs and KEDA read is one the services export.

The cluster states checked are the ones the README's commands produce (each a list of files applied in
order; a later object with the same kind/namespace/name replaces the earlier one, like ``kubectl apply``).
Exit codes: 0 all checks pass, 1 problems found (or a --metrics-url unreachable), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modelops.errors import UsageError
from PR1_horizontal_pod_autoscaling.manifest_checks.autoscaling import check_autoscalers
from PR1_horizontal_pod_autoscaling.manifest_checks.compose import check_kafka_image, compose_image
from PR1_horizontal_pod_autoscaling.manifest_checks.documents import (
    YAMLLINT_CONFIG,
    Doc,
    Report,
    apply_in_order,
    load_docs,
    manifest_files,
)
from PR1_horizontal_pod_autoscaling.manifest_checks.metrics import check_metrics, code_metrics, fetch_metrics
from PR1_horizontal_pod_autoscaling.manifest_checks.pr2_code import check_code_consistency, configmap_settings
from PR1_horizontal_pod_autoscaling.manifest_checks.schema import (
    SCHEMA_DIR,
    check_schema,
    check_versions,
    check_yamllint,
    render_kustomization,
)
from PR1_horizontal_pod_autoscaling.manifest_checks.workloads import check_workloads

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_COMPOSE = REPO_ROOT / "PR2_async_inference" / "docker-compose.yaml"
#: Oldest and newest minor versions checked by default (kubernetes-validate ships 1.25-1.37).
DEFAULT_KUBE_VERSIONS = ("1.30", "1.33")

#: Cluster states the README's commands produce: files applied in this order.
APPLY_SETS: dict[str, tuple[str, ...]] = {
    "the three commands": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml"),
    "loading models": ("model-pvc.yaml", "model-loader.yaml"),
    "adapter by hand": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml", "servicemonitor.yaml",
                        "prometheus-adapter-config.yaml", "custom-metrics-hpa.yaml"),
    "KEDA": ("model-pvc.yaml", "k8s-deployment.yaml", "hpa.yaml", "servicemonitor.yaml",
             "keda-scaledobject.yaml"),
    "dev Kafka": ("kafka-dev.yaml",),
}
KUSTOMIZE_SET = "kubectl kustomize"


class ChecksFailed(RuntimeError):
    """The manifests have problems (the command exits 1); ``result`` is the report as a dict."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"{len(result['problems'])} problem(s) in the manifests")
        self.result = result


def check_set(docs: Sequence[Doc], exported: set[str], settings_module: Any, compose: str | None) -> list[str]:
    """Every consistency check on one cluster state."""
    settings, problems = configmap_settings(docs, settings_module)
    code_problems, max_batch = check_code_consistency(docs, settings, settings_module, compose)
    problems += code_problems
    problems += check_workloads(docs)
    problems += check_autoscalers(docs, settings, max_batch)
    problems += check_metrics(docs, exported)
    return problems


def load_manifests(files: Sequence[Path], report: Report) -> dict[str, list[Doc]]:
    """The documents of each file; a file that is not valid YAML is a problem and contributes none."""
    by_file: dict[str, list[Doc]] = {}
    for path in files:
        try:
            by_file[path.name] = load_docs(path)
        except yaml.YAMLError as exc:
            report.add([f"{path.name}: not valid YAML: {exc}"])
            by_file[path.name] = []
    return by_file


def check_compose(by_file: dict[str, list[Doc]], compose_file: Path | str | None, report: Report) -> str | None:
    """The compose file's service image (None without one), its Kafka image against the manifests'."""
    if compose_file is None:
        return None
    image, problems = compose_image(Path(compose_file))
    report.add(problems, "compose")
    report.add(check_kafka_image([d for docs in by_file.values() for d in docs], Path(compose_file)), "compose")
    if image is None and not problems:
        report.notes.append(f"image: {compose_file} not found, compared with settings.IMAGE_NAME only")
    return image


def cluster_states(root: Path, by_file: dict[str, list[Doc]], kube_versions: Sequence[str], kubectl: str | None,
                   report: Report) -> dict[str, list[Doc]]:
    """The objects each of APPLY_SETS leaves, and what ``kubectl kustomize`` renders when kubectl is there."""
    sets: dict[str, list[Doc]] = {}
    for name, members in APPLY_SETS.items():
        missing = [m for m in members if m not in by_file]
        if missing:
            report.add([f"missing manifest(s): {', '.join(missing)}"], name)
        sets[name] = apply_in_order(d for m in members for d in by_file.get(m, []))
    kubectl = kubectl or shutil.which("kubectl")
    if not kubectl:
        report.notes.append("kubectl not found: `kubectl kustomize` not run")
        return sets
    rendered, problems = render_kustomization(root, kubectl)
    report.add(problems, KUSTOMIZE_SET)
    if rendered:
        sets[KUSTOMIZE_SET] = rendered
        for doc in rendered:
            report.add(check_schema(doc, kube_versions[-1:]), KUSTOMIZE_SET)
    return sets


def run_checks(root: Path | str = HERE, *, kube_versions: Sequence[str] = DEFAULT_KUBE_VERSIONS,
               exported_metrics: set[str] | None = None, compose_file: Path | str | None = DEFAULT_COMPOSE,
               kubectl: str | None = None, lint: bool = True) -> Report:
    """Every check on the manifests in ``root``.

    Args:
        root: folder with the manifests, kustomization.yaml and .yamllint.yaml (default: this folder).
        kube_versions: Kubernetes versions to validate against (default: 1.30 and 1.33).
        exported_metrics: series names the services expose (default: rendered from PR2's metrics module).
        compose_file: PR2's docker-compose.yaml for the image name (default: the repo's).
        kubectl: kubectl binary for ``kubectl kustomize`` (default: found on PATH; skipped with a note
            when absent).
        lint: run yamllint (default: True).
    """
    from PR2_async_inference import settings as settings_module

    root = Path(root)
    report = Report()
    files = manifest_files(root)
    by_file = load_manifests(files, report)
    for docs in by_file.values():
        for doc in docs:
            report.add(check_schema(doc, kube_versions), "schema")
    report.notes.append(f"schemas: {sum(map(len, by_file.values()))} documents in {len(files)} files, strict, "
                        f"Kubernetes {', '.join(kube_versions)}; CRDs against {SCHEMA_DIR.name}/")
    if lint:
        report.add(check_yamllint([*files, root / "kustomization.yaml"], root / YAMLLINT_CONFIG), "yamllint")
    if exported_metrics is None:
        exported_metrics = code_metrics()
        report.notes.append("metric names: rendered from PR2_async_inference.metrics (no --metrics-url)")
    image = check_compose(by_file, compose_file, report)
    sets = cluster_states(root, by_file, kube_versions, kubectl, report)
    for name, docs in sets.items():
        report.add(check_set(docs, exported_metrics, settings_module, image), name)
    report.notes.append(f"consistency: {len(sets)} cluster states ({', '.join(sets)})")
    return report


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Validate the PR1 Kubernetes manifests offline.", add_help=add_help)
    parser.add_argument("--root", type=Path, default=HERE, help=f"manifest folder (default: {HERE})")
    parser.add_argument("--kube-version", action="append", dest="kube_versions", default=None,
                        help="Kubernetes version to validate against, repeatable "
                             f"(default: {' '.join(DEFAULT_KUBE_VERSIONS)})")
    parser.add_argument("--metrics-url", action="append", default=None,
                        help="a running service's /metrics URL to read metric names from, repeatable "
                             "(default: render PR2_async_inference.metrics)")
    parser.add_argument("--compose-file", type=Path, default=DEFAULT_COMPOSE,
                        help=f"PR2 compose file for the image name (default: {DEFAULT_COMPOSE})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (default: text)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def print_report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for note in result["notes"]:
        print(f"note: {note}")
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    print("OK: all checks passed" if result["ok"] else f"FAILED: {len(result['problems'])} problem(s)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every check, print the report, and return it; raise ChecksFailed (exit 1) when it has problems."""
    versions = check_versions(args.kube_versions or DEFAULT_KUBE_VERSIONS)
    if not (args.root / "kustomization.yaml").exists():
        raise UsageError(f"--root {args.root} has no kustomization.yaml")
    try:
        exported = fetch_metrics(args.metrics_url) if args.metrics_url else None
    except OSError as exc:
        raise OSError(f"cannot read metrics from --metrics-url: {exc}") from exc
    report = run_checks(args.root, kube_versions=versions, exported_metrics=exported,
                        compose_file=args.compose_file)
    result = report.as_dict()
    print_report(result, args.json)
    if not report.ok:
        raise ChecksFailed(result)
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
