"""Build the control plane's binaries from upstream Go modules, once per version, into a per-user cache.

Nothing here is prebuilt or vendored: every binary is compiled from the module the Go module proxy serves.
* Kubernetes (kube-apiserver, kube-controller-manager, kubectl): ``k8s.io/kubernetes`` replaces its
  ``k8s.io/*`` libraries with ``./staging`` folders that its module zip lacks, so ``go install`` refuses it. The
  source is copied, the workspace and vendor folder dropped, and every staging module required at its published
  ``v0.X.Y`` instead.
* etcd: ``go.etcd.io/etcd/server/v3`` has replace lines too; a three-line main module calls ``etcdmain.Main``.
* KEDA (operator and metrics API server): ``github.com/kedacore/keda/v2`` builds from a copy of its source.
* CRDs: read from the prometheus-operator and KEDA modules.

The cache (``$SCALING_INFRA_CACHE``, else ``$XDG_CACHE_HOME/scaling-infra``, else ``~/.cache/scaling-infra``) is
outside the clone, so a fresh clone on the same machine reuses the binaries; Go's own module and build caches
(``go env GOMODCACHE GOCACHE``) make a rebuild after a version change incremental.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.3"
ETCD_VERSION = "v3.6.4"
KEDA_VERSION = "v2.17.2"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
#: Staging modules nothing in the build imports: dropped, not required (the proxy refuses the first).
UNREQUIRED_STAGING = ("k8s.io/sample-cli-plugin", "k8s.io/sample-controller")
logger = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """A binary could not be built; the message says which command failed and where its output is."""


def cache_root() -> Path:
    if override := os.environ.get("SCALING_INFRA_CACHE"):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scaling-infra"


@dataclass(frozen=True)
class Binaries:
    """Paths of the built binaries and CRD files."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    keda_operator: Path | None
    keda_adapter: Path | None
    crds: tuple[Path, ...]


#: Where Go's release tarball installs itself, for a shell whose PATH lacks it.
GO_RELEASE_BIN = Path("/usr/local/go/bin")


def _go_env() -> dict[str, str]:
    path = os.environ.get("PATH", "")
    if shutil.which("go") is None and (GO_RELEASE_BIN / "go").exists():
        path = f"{GO_RELEASE_BIN}{os.pathsep}{path}"
    if shutil.which("go", path=path) is None:
        raise BuildError("no 'go' on PATH: install Go >= 1.24 (the Go release, or Debian's golang-go) and retry")
    # GOTOOLCHAIN=local: a module asking for a newer Go fails here with its reason instead of downloading one.
    return {**os.environ, "PATH": path, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}  (in {cwd}, {time.monotonic() - started:.0f} s, exit {proc.returncode})\n")
        handle.write(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BuildError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); full output in {log}:\n{tail}")
    return proc.stdout


def module_dir(module: str, version: str, log: Path) -> Path:
    """Download ``module@version`` into Go's module cache and return its (read-only) source folder."""
    env = _go_env()
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], Path.cwd(), log, env)
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def _writable_copy(src: Path, dest: Path, skip: tuple[str, ...]) -> None:
    """Copy a module's source (read-only in the module cache) to ``dest``, user-writable, without ``skip``."""
    if dest.exists():
        shutil.rmtree(dest, onerror=lambda f, p, e: (os.chmod(p, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR), f(p)))
    shutil.copytree(src, dest, ignore=lambda d, names: [n for n in names if Path(d) == src and n in skip])
    dest.chmod(dest.stat().st_mode | stat.S_IWUSR)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _built(outputs: list[Path], stamp: Path, key: str) -> bool:
    return stamp.exists() and stamp.read_text() == key and all(path.exists() for path in outputs)


def build_kubernetes(version: str = KUBERNETES_VERSION) -> dict[str, Path]:
    """kube-apiserver, kube-controller-manager and kubectl of ``version`` (6-10 min cold on 2 cores)."""
    root = cache_root() / f"kubernetes-{version}"
    bin_dir, log = root / "bin", root / "build.log"
    names = ("kube-apiserver", "kube-controller-manager", "kubectl")
    outputs = {name: bin_dir / name for name in names}
    if _built(list(outputs.values()), root / "built", version):
        return outputs
    env = _go_env()
    src = root / "src"
    logger.info("building Kubernetes %s (kube-apiserver, kube-controller-manager, kubectl): several minutes", version)
    _writable_copy(module_dir("k8s.io/kubernetes", version, log), src, ("vendor", "staging", ".git"))
    for name in ("go.work", "go.work.sum"):
        (src / name).unlink(missing_ok=True)
    go_mod = (src / "go.mod").read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", go_mod, flags=re.MULTILINE)
    # The staging libraries are published as k8s.io/X v0.MINOR.PATCH for Kubernetes v1.MINOR.PATCH.
    library_version = "v0" + version[len("v1"):]
    edits = []
    for module in staging:
        edits.append(f"-dropreplace={module}")
        if module not in UNREQUIRED_STAGING:
            edits.append(f"-require={module}@{library_version}")
    _run(["go", "mod", "edit", *edits], src, log, env)
    bin_dir.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-trimpath", "-o", str(bin_dir) + "/", *(f"./cmd/{name}" for name in names)], src, log, env)
    (root / "built").write_text(version)
    shutil.rmtree(src, ignore_errors=True)  # 300 MB of source; Go's caches keep what a rebuild needs
    return outputs


ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def build_etcd(version: str = ETCD_VERSION) -> Path:
    """etcd ``version`` through a main module that calls ``etcdmain.Main`` (under a minute cold)."""
    root = cache_root() / f"etcd-{version}"
    binary, log = root / "bin" / "etcd", root / "build.log"
    if _built([binary], root / "built", version):
        return binary
    env = _go_env()
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    (src / "main.go").write_text(ETCD_MAIN)
    _run(["go", "mod", "init", "local/etcd"], src, log, env)
    _run(["go", "get", f"go.etcd.io/etcd/server/v3@{version}"], src, log, env)
    _run(["go", "mod", "tidy"], src, log, env)
    _run(["go", "build", "-trimpath", "-o", str(binary), "."], src, log, env)
    (root / "built").write_text(version)
    return binary


#: KEDA's metrics API server serves its own /metrics on every interface (``:PORT``), with no flag for the host;
#: this one-line change of the copied source makes it loopback. It is the only change made to upstream code.
ADAPTER_METRICS_BIND = ('fmt.Sprintf(":%v", metricsAPIServerPort)', 'fmt.Sprintf("127.0.0.1:%v", metricsAPIServerPort)')


def _bind_adapter_metrics_to_loopback(main_go: Path) -> None:
    text = main_go.read_text()
    upstream, loopback = ADAPTER_METRICS_BIND
    if upstream not in text:
        raise BuildError(f"{main_go} no longer binds its metrics with {upstream}: update ADAPTER_METRICS_BIND")
    main_go.write_text(text.replace(upstream, loopback))


def build_keda(version: str = KEDA_VERSION) -> dict[str, Path]:
    """KEDA's operator and metrics API server (``cmd/operator``, ``cmd/adapter``) of ``version``."""
    root = cache_root() / f"keda-{version}"
    bin_dir, log = root / "bin", root / "build.log"
    outputs = {"keda-operator": bin_dir / "keda-operator", "keda-adapter": bin_dir / "keda-adapter"}
    if _built(list(outputs.values()), root / "built", version):
        return outputs
    env = _go_env()
    src = root / "src"
    logger.info("building KEDA %s (operator, metrics API server): several minutes", version)
    _writable_copy(module_dir("github.com/kedacore/keda/v2", version, log), src, ("vendor", ".git"))
    _bind_adapter_metrics_to_loopback(src / "cmd" / "adapter" / "main.go")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, package in (("keda-operator", "./cmd/operator"), ("keda-adapter", "./cmd/adapter")):
        _run(["go", "build", "-trimpath", "-o", str(outputs[name]), package], src, log, env)
    (root / "built").write_text(version)
    shutil.rmtree(src, ignore_errors=True)
    return outputs


def crd_files(keda: bool = True) -> tuple[Path, ...]:
    """The upstream CRDs PR1's manifests use: ServiceMonitor (prometheus-operator), and KEDA's when ``keda``."""
    log = cache_root() / "crds.log"
    operator = module_dir("github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR_VERSION, log)
    files = [operator / "example" / "prometheus-operator-crd" / "monitoring.coreos.com_servicemonitors.yaml"]
    if keda:
        keda_src = module_dir("github.com/kedacore/keda/v2", KEDA_VERSION, log)
        # All of them: the operator watches every kind (eventing.keda.sh's too) and exits when one is missing.
        files += sorted((keda_src / "config" / "crd" / "bases").glob("*keda.sh_*.yaml"))
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        raise BuildError(f"CRD files not in their modules: {', '.join(missing)}")
    return tuple(files)


def ensure_binaries(keda: bool = True) -> Binaries:
    """Build whatever is missing from the cache and return every path (cheap when all is cached)."""
    etcd = build_etcd()
    kubernetes = build_kubernetes()
    keda_bins = build_keda() if keda else {}
    return Binaries(
        etcd=etcd,
        kube_apiserver=kubernetes["kube-apiserver"],
        kube_controller_manager=kubernetes["kube-controller-manager"],
        kubectl=kubernetes["kubectl"],
        keda_operator=keda_bins.get("keda-operator"),
        keda_adapter=keda_bins.get("keda-adapter"),
        crds=crd_files(keda),
    )
