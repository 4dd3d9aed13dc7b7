"""``docker-compose up -d`` of PR2's stack on this machine, and ``down`` again (``make compose-up`` / ``compose-down``).

    python PR2_async_inference/compose_stack.py up            # engine, images, model, up -d, wait until healthy
    python PR2_async_inference/compose_stack.py down          # down -v; stops the engine `up` started
    eval "$(python PR2_async_inference/compose_stack.py env)" # the variables, for docker-compose by hand

``up`` starts the Docker engine when none runs (:mod:`container_engine`), builds the local images that are missing
(``--images local``, the default: :mod:`container_images`; ``--images upstream`` keeps the compose file's
registry images, for a machine with internet), makes the served model when ``models/quantized_model.pt`` is
missing (PR3's ResNet-18 trained on the bundled digits, then int8), runs ``docker-compose up -d`` in
``PR2_async_inference/`` and waits until every healthcheck passes, the topics job has exited 0 and Prometheus is
ready. The service image ``inference-service:0.1.0`` is built again when its build key - a hash of the build context
and the base image - differs from the one recorded for the image's id at its last build here, so ``up`` after a change
of the sources rebuilds it (Docker's layer cache keeps the dependency layers) and ``up`` without one does not.
Importable: :func:`compose`, :func:`stack_env`, :func:`wait_healthy`, :func:`compose_up`, :func:`compose_down`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.errors import UsageError
from PR2_async_inference import container_engine, container_images
from PR2_async_inference.processes import REPO_ROOT
from PR2_async_inference.settings import IMAGE_NAME

logger = logging.getLogger(__name__)

COMPOSE_DIR = Path(__file__).resolve().parent
#: What the Dockerfile copies (the root .dockerignore sends only these): the service image's key hashes them.
CONTEXT_FILES = ("requirements.txt", "pyproject.toml", "README.md", "LICENSE")
CONTEXT_DIRS = ("modelops", "PR2_async_inference", "PR3_model_optimization", "PR4_model_benchmarking")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}
MODEL_FILE = "quantized_model.pt"
IMAGE_MODES = ("local", "upstream")


@dataclass
class ComposeStack:
    """A started compose project: its name, the environment its ``docker-compose`` calls need, and its URLs."""

    project: str | None
    env: dict[str, str]
    api_url: str
    prometheus_url: str
    kafka_bootstrap: str
    files: list[Path] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    engine_state: dict[str, Any] | None = None


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise UsageError("no docker-compose on PATH: install Debian's docker-compose (apt-get install docker-compose)")


def compose(project: str | None, *args: str, env: dict[str, str] | None = None, files: list[Path] | None = None,
            timeout_s: float = 1800.0, capture: bool = True) -> subprocess.CompletedProcess:
    """``docker-compose [-p project] args`` in ``PR2_async_inference/`` with ``env`` added (``files``: override files
    after docker-compose.yaml); raises with the tail of its output when it fails."""
    file_args = [a for f in ([COMPOSE_DIR / "docker-compose.yaml", *files] if files else []) for a in ("-f", str(f))]
    cmd = [*compose_command(), *(["-p", project] if project else []), *file_args, *args]
    result = subprocess.run(cmd, cwd=COMPOSE_DIR, env={**os.environ, **container_images.BUILD_ENV, **(env or {})},
                            timeout=timeout_s, text=True, stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    if result.returncode != 0:
        tail = " | ".join((result.stdout or "").strip().splitlines()[-6:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {result.returncode}: {tail}")
    return result


def service_build_key(python_image: str) -> str:
    """A hash of every file the Dockerfile copies and of its base image."""
    h = hashlib.sha256(python_image.encode())
    paths = [REPO_ROOT / name for name in CONTEXT_FILES]
    for folder in CONTEXT_DIRS:
        paths += [p for p in (REPO_ROOT / folder).rglob("*")
                  if p.is_file() and not SKIPPED_PARTS & set(p.parts) and p.suffix != ".pyc"]
    for path in sorted(paths):
        h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _image_id(tag: str) -> str | None:
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True,
                            text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_service_image(project: str | None, env: dict[str, str], files: list[Path] | None = None,
                         show_output: bool = False) -> bool:
    """Build ``inference-service:0.1.0`` (``docker-compose build topics``) unless the image there now is the one
    built here for the current build key; returns whether it built."""
    record = container_engine.cache_root() / "service-image.json"
    key = service_build_key(env.get("PYTHON_IMAGE", "python:3.11-slim"))
    built = json.loads(record.read_text()) if record.exists() else {}
    if built.get("key") == key and built.get("id") == _image_id(IMAGE_NAME):
        return False
    logger.info("building %s (build key %s)", IMAGE_NAME, key)
    compose(project, "build", "topics", env=env, files=files, capture=not show_output)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "id": _image_id(IMAGE_NAME)}))
    return True


def image_variables(images: str) -> dict[str, str]:
    """The compose variables that pick the images: the local builds' tags (``local``), or none (``upstream``:
    the compose file's defaults)."""
    if images not in IMAGE_MODES:
        raise UsageError(f"Unknown image source {images!r}. Choose one of: {', '.join(IMAGE_MODES)}")
    return container_images.build_local_images() if images == "local" else {}


def stack_env(variables: dict[str, str], *, api_port: int = 8000, api_host: str = "0.0.0.0",
              prometheus_port: int = 9090, kafka_port: int = 29092, models_dir: Path | None = None) -> dict[str, str]:
    """Every variable docker-compose.yaml reads: the images, the host ports and the models folder."""
    return {**variables, "API_HOST": api_host, "API_PORT": str(api_port), "PROMETHEUS_PORT": str(prometheus_port),
            "KAFKA_HOST_PORT": str(kafka_port), "MODELS_DIR": str((models_dir or REPO_ROOT / "models").resolve())}


def ensure_model(models_dir: Path, base_model: Path | None = None, timeout_s: float = 1800.0) -> Path:
    """``models_dir/quantized_model.pt`` (what model_registry.yaml serves), made when missing: PR3's int8
    (ONNX Runtime, static) of ``base_model``, by default ``models_dir/resnet18.pt``, itself trained first on the
    bundled digits when missing. The folder and files are made readable to the containers' non-root user."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / MODEL_FILE
    if not target.exists():
        base = base_model or models_dir / "resnet18.pt"
        if not base.exists():
            logger.info("training %s on the bundled digits (PR3 prepare_model.py)", base)
            with tempfile.TemporaryDirectory(prefix="prepare_resnet18_") as checkpoints:
                subprocess.run([sys.executable, "PR3_model_optimization/prepare_model.py", "--arch", "resnet18",
                                "--image-size", "32", "--epochs", "3", "--threads", "2", "--save-path", str(base),
                                "--output-dir", checkpoints],
                               cwd=REPO_ROOT, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL)
        logger.info("quantizing %s to %s (PR3 model_quantization.py)", base, target)
        subprocess.run([sys.executable, "PR3_model_optimization/model_quantization.py", "--model", str(base),
                        "--quantization-method", "static", "--backend", "onnxruntime", "--threads", "2",
                        "--save-path", str(target)], cwd=REPO_ROOT, check=True, timeout=timeout_s,
                       stdout=subprocess.DEVNULL)
    models_dir.chmod(0o755)
    for path in models_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)
    return target


def container_states(project: str | None) -> list[dict[str, Any]]:
    """``{service, name, status, exit_code, health}`` of every container of the compose project."""
    ids = compose(project, "ps", "-q", env={}).stdout.split()
    if not ids:
        return []
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                                          check=True).stdout)
    return [{"service": c["Config"]["Labels"].get("com.docker.compose.service"), "name": c["Name"].lstrip("/"),
             "id": c["Id"], "status": c["State"]["Status"], "exit_code": c["State"]["ExitCode"],
             "health": (c["State"].get("Health") or {}).get("Status")} for c in inspected]


def _ready(state: dict[str, Any]) -> bool:
    if state["service"] == "topics":  # a job: done when it exited 0
        return state["status"] == "exited" and state["exit_code"] == 0
    return state["status"] == "running" and state["health"] in (None, "healthy")


def wait_healthy(project: str | None, env: dict[str, str], prometheus_url: str | None = None,
                 timeout_s: float = 600.0) -> float:
    """Until every container passes its healthcheck (the topics job: exited 0) and Prometheus answers
    ``/-/ready``; returns the seconds waited. Raises naming the container that failed or is still not ready."""
    started = time.monotonic()
    states: list[dict[str, Any]] = []
    while time.monotonic() - started < timeout_s:
        states = container_states(project)
        failed = [s for s in states if s["service"] == "topics" and s["status"] == "exited" and s["exit_code"]]
        if failed:
            raise RuntimeError(f"the topics job exited with {failed[0]['exit_code']}: see docker logs "
                               f"{failed[0]['name']}")
        if states and all(_ready(s) for s in states) and (prometheus_url is None or _http_ok(prometheus_url
                                                                                              + "/-/ready")):
            return time.monotonic() - started
        time.sleep(1.0)
    waiting = [f"{s['name']} ({s['status']}, health {s['health']})" for s in states if not _ready(s)]
    raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {', '.join(waiting) or 'Prometheus not ready'}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def compose_up(project: str | None = None, *, images: str = "local", models_dir: Path | None = None,
               api_port: int = 8000, api_host: str = "0.0.0.0", prometheus_port: int = 9090,
               kafka_port: int = 29092, timeout_s: float = 600.0, base_model: Path | None = None,
               files: list[Path] | None = None, show_output: bool = False) -> ComposeStack:
    """Engine, images, model, ``docker-compose up -d``, healthy: the steps of ``make compose-up``, timed
    (``files``: compose override files, e.g. the benchmark's CPU pinning; ``show_output``: docker-compose's
    build and up output to the terminal instead of captured)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    engine_state = container_engine.start_engine()
    timings["engine_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    variables = image_variables(images)
    timings["images_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    models_dir = models_dir or REPO_ROOT / "models"
    ensure_model(models_dir, base_model)
    timings["model_s"] = time.perf_counter() - clock
    env = stack_env(variables, api_port=api_port, api_host=api_host, prometheus_port=prometheus_port,
                    kafka_port=kafka_port, models_dir=models_dir)
    clock = time.perf_counter()
    ensure_service_image(project, env, files, show_output)
    timings["service_image_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    compose(project, "up", "-d", env=env, files=files, capture=not show_output)
    timings["up_d_s"] = time.perf_counter() - clock
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    timings["healthy_s"] = wait_healthy(project, env, prometheus_url, timeout_s)
    stack = ComposeStack(project, env, f"http://127.0.0.1:{api_port}", prometheus_url, f"127.0.0.1:{kafka_port}",
                         list(files or []), {k: round(v, 1) for k, v in timings.items()}, engine_state)
    logger.info("stack up: %s", stack.timings_s)
    return stack


def leftovers(project: str | None) -> dict[str, list[str]]:
    """Containers, networks and volumes still labelled with the compose project (empty after ``down -v``)."""
    name = project or COMPOSE_DIR.name.lower()
    label = f"label=com.docker.compose.project={name}"
    found = {}
    for kind, cmd in (("containers", ["ps", "-aq"]), ("networks", ["network", "ls", "-q"]),
                      ("volumes", ["volume", "ls", "-q"])):
        out = subprocess.run(["docker", *cmd, "--filter", label], capture_output=True, text=True, check=True).stdout
        found[kind] = out.split()
    return found


def compose_down(project: str | None = None, env: dict[str, str] | None = None, stop_engine: bool = True,
                 engine_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """``docker-compose down -v``, then stop the engine that ``up`` started (``engine_state``, else the state
    file's) and undo its network changes; returns what is left of the project (nothing) and what was undone."""
    result: dict[str, Any] = {"leftovers": {}, "engine_undone": []}
    if container_engine.engine_running():
        # The variables only fill the file's fields here; any value works for `down`.
        compose(project, "down", "-v", "--remove-orphans", "--timeout", "30", env=env or stack_env({}))
        result["leftovers"] = leftovers(project)
    if stop_engine:
        result["engine_undone"] = container_engine.stop_engine(engine_state)
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="docker-compose up -d / down of PR2's stack on this machine.",
                                     add_help=add_help)
    parser.add_argument("command", choices=["up", "down", "env"],
                        help="up: engine, images, model, up -d, wait until healthy; down: down -v and stop the "
                        "engine `up` started; env: print the variables for docker-compose by hand")
    parser.add_argument("--images", choices=IMAGE_MODES, default="local",
                        help="local: build local stand-ins of the registry images (no registry needed); upstream: "
                        "the compose file's registry images (default: local)")
    parser.add_argument("-p", "--project", default=None,
                        help="compose project name (default: compose's own, the folder's name)")
    parser.add_argument("--models-dir", default=None, help="mounted at /app/models (default: models/)")
    parser.add_argument("--api-port", type=int, default=8000, help="API port on the host (default: 8000)")
    parser.add_argument("--api-host", default="127.0.0.1",
                        help="host address the API's port is published on; the compose file alone publishes it on "
                        "0.0.0.0 (default: 127.0.0.1)")
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="how long to wait for the healthchecks (default: 600)")
    parser.add_argument("--keep-engine", action="store_true", help="down: leave the engine running (default: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    models_dir = Path(args.models_dir) if args.models_dir else None
    if args.command == "down":
        info = compose_down(args.project, stop_engine=not args.keep_engine)
    elif args.command == "env":
        container_engine.start_engine()
        env = stack_env(image_variables(args.images), api_port=args.api_port, api_host=args.api_host,
                        models_dir=models_dir)
        print("\n".join(f"export {name}={value}" for name, value in env.items()), flush=True)
        return env
    else:
        stack = compose_up(args.project, images=args.images, models_dir=models_dir, api_port=args.api_port,
                           api_host=args.api_host, timeout_s=args.timeout_s, show_output=True)
        info = {"api_url": stack.api_url, "prometheus_url": stack.prometheus_url,
                "kafka_bootstrap": stack.kafka_bootstrap, "images": {k: v for k, v in stack.env.items()
                                                                     if k.endswith("_IMAGE")},
                "timings_s": stack.timings_s}
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
