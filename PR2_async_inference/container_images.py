"""Local stand-ins for docker-compose.yaml's upstream images, for machines that reach no container registry.

    python PR2_async_inference/container_images.py                 # build what is missing, print the variables
    python PR2_async_inference/container_images.py --only kafka --format env

``docker-compose.yaml`` names upstream images (``apache/kafka``, ``prom/prometheus``, ``python:3.11-slim`` under
the service's Dockerfile) through variables with those defaults; where ``docker pull`` cannot reach a registry,
this module builds local images and prints the variables that choose them (:data:`IMAGES`):

- a Debian root file system per image from the Debian mirror apt already uses (``debootstrap --variant=minbase``
  with the image's packages), imported with ``docker import``;
- ``PYTHON_IMAGE``: Debian's Python 3.11 with the project's requirements installed from a wheelhouse made on the
  host (``pip download`` of what the host's environment has installed, through pip's cache): one container with
  the wheelhouse mounted read-only and no network runs ``local_images/python-install.sh``, and is committed;
- ``KAFKA_IMAGE``: Apache Kafka 3.9.1 from the Maven Central jars ``apache_kafka.py fetch`` gets, on Debian's
  Java 17, with apache/kafka's entry point behaviour and healthcheck script (``local_images/``);
- ``PROMETHEUS_IMAGE``: Debian's ``prometheus`` package.

Every tag is ``inference-local/<name>:<version>-<key>``, never an upstream name, where the key is a hash of the
image's inputs (packages, mirror, Dockerfile, scripts, jar names, wheel set): an image whose tag exists is not
built again, and a changed input makes a new tag. Images live in the engine's data root and the wheelhouse and
Debian packages under ``${XDG_CACHE_HOME:-$HOME/.cache}/inference-compose``, so another clone on the same
machine reuses them. Needs root (debootstrap) and a running engine (``container_engine.py start``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.errors import UsageError
from PR2_async_inference import apache_kafka
from PR2_async_inference.container_engine import cache_root
from PR2_async_inference.processes import REPO_ROOT

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
FILES = HERE / "local_images"
SUITE = "bookworm"
#: The repository part of every local tag: never an upstream image's name.
REGISTRY_PREFIX = "inference-local"
#: Docker's legacy builder (compose 1.29 builds with it too): the engine here has no BuildKit front end.
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}


@dataclass(frozen=True)
class LocalImage:
    """One local image: the Debian packages of its root file system, its recipe in ``local_images/`` (a
    Dockerfile, or a script run in a container that is then committed), the compose variable it fills and the
    upstream image it stands in for."""

    name: str
    version: str
    packages: tuple[str, ...]
    recipe: str
    variable: str
    upstream: str


IMAGES = {
    "python": LocalImage("python", "3.11", ("python3", "python3-venv"), "python-install.sh", "PYTHON_IMAGE",
                         "python:3.11-slim"),
    "kafka": LocalImage("kafka", apache_kafka.KAFKA_VERSION, ("openjdk-17-jre-headless",), "kafka.Dockerfile",
                        "KAFKA_IMAGE", f"apache/kafka:{apache_kafka.KAFKA_VERSION}"),
    "prometheus": LocalImage("prometheus", SUITE, ("prometheus",), "prometheus.Dockerfile", "PROMETHEUS_IMAGE",
                             "prom/prometheus:v2.54.1"),
}


def digest(*parts: Any) -> str:
    """12 hex digits of a SHA-256 over ``parts`` (JSON-encoded): the key in a local tag."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def docker(*args: str, timeout_s: float = 3600.0, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, timeout=timeout_s, env={**os.environ, **BUILD_ENV},
                          **kwargs)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, capture_output=True).returncode == 0


def image_size_mb(tag: str) -> float:
    out = docker("image", "inspect", "--format", "{{.Size}}", tag, capture_output=True, text=True).stdout
    return round(int(out.strip()) / 1e6, 1)


def remove_other_tags(tag: str) -> None:
    """Remove the images tagged like ``tag`` but for its key (``<repository>:<version>-<key>``: builds from earlier
    inputs; a Python image is gigabytes). An image a container still uses stays (``docker rmi`` refuses it)."""
    repository, stem = tag.rsplit(":", 1)[0], tag.rsplit("-", 1)[0] + "-"
    listed = docker("images", repository, "--format", "{{.Repository}}:{{.Tag}}", capture_output=True,
                    text=True).stdout.split()
    for other in listed:
        if other != tag and other.startswith(stem):
            docker("rmi", other, check=False, capture_output=True)


def debian_mirror() -> str:
    """The first Debian archive URI apt uses for ``SUITE`` (``/etc/apt/sources.list`` or a ``.sources`` file)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):  # deb822: "URIs:" and "Suites:" lines in one stanza
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():  # one-line format: deb [options] URI SUITE components
            words = [w for w in re.sub(r"\[.*?\]", "", line).split()]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise RuntimeError(f"no Debian {SUITE} mirror in /etc/apt/sources.list*: debootstrap needs one")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


def remove_rootfs(path: Path) -> None:
    """Delete a root file system debootstrap made, after unmounting what it left mounted (a failed run can
    leave /proc and /sys mounted inside it: deleting through those would reach the host's)."""
    for mount in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    if _mounts_under(path):
        raise RuntimeError(f"{path} still has mounts ({_mounts_under(path)}); not deleting it")
    shutil.rmtree(path, ignore_errors=True)


def rootfs_image(image: LocalImage, cache: Path) -> str:
    """The imported Debian root file system with ``image.packages``; built when its tag is missing."""
    mirror = debian_mirror()
    tag = f"{REGISTRY_PREFIX}/rootfs-{image.name}:{SUITE}-{digest(SUITE, mirror, 'minbase', image.packages)}"
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("no debootstrap on PATH: install Debian's debootstrap (.ci/run does)")
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    rootfs = cache / f"rootfs-{image.name}.tmp"
    remove_rootfs(rootfs)
    started = time.perf_counter()
    logger.info("debootstrap %s (+ %s) from %s", SUITE, ", ".join(image.packages), mirror)
    try:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(image.packages)}",
                        f"--cache-dir={debs}", SUITE, str(rootfs), mirror],
                       check=True, timeout=1800, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Package lists and apt's caches are the mirror's state, not the image's.
        for leftover in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        docker("import", "-", tag, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {rootfs} failed")
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(map(str, exc.cmd[:3]))} failed: {' | '.join(output)}") from exc
    finally:
        remove_rootfs(rootfs)
    logger.info("imported %s in %.0f s", tag, time.perf_counter() - started)
    remove_other_tags(tag)
    return tag


def host_constraints() -> str:
    """``pip freeze`` of this environment (editable and local-path installs left out): the versions the
    wheelhouse pins, so the image runs what the host's tests run."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    return "".join(f"{line}\n" for line in frozen.splitlines() if "==" in line and " @ " not in line)


def _installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def wheelhouse(cache: Path) -> Path:
    """A folder with a wheel of every requirement (``requirements.txt`` at the host's installed versions), pip
    and setuptools; made once per input set with ``pip download`` (served from pip's cache when the host's
    install filled it)."""
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    constraints = host_constraints()
    tools = [f"pip=={_installed_version('pip')}", f"setuptools=={_installed_version('setuptools')}"]
    # Keyed by the requirement lines, not the file's text: a reworded comment must not cost gigabytes again.
    lines = sorted(filter(None, (line.split("#", 1)[0].strip() for line in requirements.splitlines())))
    folder = cache / f"wheelhouse-{digest(lines, constraints, tools)}"
    if (folder / ".complete").exists():
        return folder
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for previous in cache.glob("wheelhouse-*/.complete"):  # pip download keeps the wheels already in --dest
        for wheel in previous.parent.glob("*.whl"):
            os.link(wheel, tmp / wheel.name)
        break
    (tmp / "requirements.txt").write_text(requirements)
    (tmp / "constraints.txt").write_text(constraints)
    started = time.perf_counter()
    logger.info("pip download of the requirements into %s", tmp)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-r", str(tmp / "requirements.txt"),
                    "-c", str(tmp / "constraints.txt"), *tools, "--dest", str(tmp)], check=True, timeout=3600)
    (tmp / ".complete").write_text(" ".join(tools) + "\n")
    for stale in cache.glob("wheelhouse-*"):  # gigabytes each: keep only the current set
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    tmp.rename(folder)
    logger.info("wheelhouse ready in %.0f s", time.perf_counter() - started)
    return folder


def kafka_context(cache: Path) -> Path:
    """The build context of the Kafka image: the jars, the scripts, and apache_kafka.py's log4j settings."""
    libs = apache_kafka.fetch_jars()
    context = cache / "kafka-context"
    shutil.rmtree(context, ignore_errors=True)
    (context / "libs").mkdir(parents=True)
    for jar in sorted(libs.glob("*.jar")):
        shutil.copy2(jar, context / "libs" / jar.name)
    for script in ("kafka-entrypoint.sh", "kafka-broker-api-versions.sh"):
        shutil.copy2(FILES / script, context / script)
    (context / "log4j.properties").write_text(apache_kafka.LOG4J)
    return context


def context_files_digest(context: Path) -> str:
    """Names and sizes of every file of a build context (jar names carry their versions)."""
    return digest(sorted((str(p.relative_to(context)), p.stat().st_size) for p in context.rglob("*") if p.is_file()))


#: What ``docker commit`` sets on the Python image: the environment first on PATH, and pip without an index.
PYTHON_IMAGE_CHANGES = (
    "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV VIRTUAL_ENV=/opt/venv",
    "ENV PIP_NO_INDEX=1",
    "ENV PIP_FIND_LINKS=/opt/wheels",
    'CMD ["python"]',
)


def commit_python_image(base: str, wheels: Path, script: Path, tag: str) -> None:
    """Run ``script`` in a container of ``base`` with ``wheels`` mounted read-only and no network, then commit it
    as ``tag``: a Dockerfile would have to copy the wheels into a layer (gigabytes) or fetch them over a network."""
    name = f"{REGISTRY_PREFIX}-build-{tag.rsplit('-', 1)[-1]}"
    docker("rm", "-f", name, check=False, capture_output=True)
    try:
        docker("run", "--name", name, "--network", "none", "-v", f"{wheels}:/wheels:ro",
               "-v", f"{script}:/python-install.sh:ro", base, "sh", "/python-install.sh",
               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        docker("commit", *[a for change in PYTHON_IMAGE_CHANGES for a in ("--change", change)], name, tag,
               stdout=subprocess.DEVNULL)
    finally:
        docker("rm", "-f", name, check=False, capture_output=True)


def build_image(image: LocalImage, cache: Path) -> str:
    """The local image ``image`` (its root file system first); built when its tag is missing; returns the tag."""
    base = rootfs_image(image, cache)
    recipe = FILES / image.recipe
    if image.name == "python":
        context = wheelhouse(cache)
        inputs = [context.name, PYTHON_IMAGE_CHANGES]
    elif image.name == "kafka":
        context = kafka_context(cache)
        inputs = [context_files_digest(context)]
    else:
        context = cache / "empty-context"
        context.mkdir(parents=True, exist_ok=True)
        inputs = []
    tag = f"{REGISTRY_PREFIX}/{image.name}:{image.version}-{digest(base, recipe.read_text(), inputs)}"
    if image_exists(tag):
        return tag
    started = time.perf_counter()
    logger.info("building %s", tag)
    if image.name == "python":
        commit_python_image(base, context, recipe, tag)
    else:
        docker("build", "--network", "none", "--build-arg", f"BASE={base}", "-f", str(recipe), "-t", tag,
               str(context), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    logger.info("built %s in %.0f s (%.0f MB)", tag, time.perf_counter() - started, image_size_mb(tag))
    remove_other_tags(tag)
    return tag


def build_local_images(names: list[str] | None = None, cache: Path | None = None) -> dict[str, str]:
    """Build the missing local images of ``names`` (default: all); returns ``{compose variable: tag}``."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    tags = {}
    for name in names or list(IMAGES):
        try:
            tags[IMAGES[name].variable] = build_image(IMAGES[name], cache)
        except subprocess.CalledProcessError as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            tail = " | ".join(output.strip().splitlines()[-5:])
            raise RuntimeError(f"building the local {name} image failed: {tail}") from exc
    return tags


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build local stand-ins for docker-compose.yaml's upstream images.",
                                     add_help=add_help)
    parser.add_argument("--only", nargs="+", choices=list(IMAGES), default=None,
                        help="images to build (default: all)")
    parser.add_argument("--format", choices=["json", "env"], default="json",
                        help="print the variables as JSON or as `export NAME=TAG` lines (default: json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, str]:
    from PR2_async_inference.container_engine import engine_running

    if not engine_running():
        raise UsageError("no Docker engine answers: start one (python PR2_async_inference/container_engine.py "
                         "start, or make compose-up)")
    tags = build_local_images(args.only)
    if args.format == "env":
        print("\n".join(f"export {name}={tag}" for name, tag in tags.items()), flush=True)
    else:
        print(json.dumps(tags), flush=True)
    return tags


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
