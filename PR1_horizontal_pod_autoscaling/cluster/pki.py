"""Certificates, keys and credentials of the local control plane, made with the ``openssl`` command.

One cluster CA signs every serving certificate (kube-apiserver, KEDA's metrics API server and its operator's gRPC
endpoint) for ``127.0.0.1`` and ``localhost``; a second CA signs the front proxy's client certificate, with which
kube-apiserver authenticates to aggregated API servers (the aggregation layer). Clients authenticate with a static
bearer token of a ``system:masters`` user: this is a single-user test cluster on loopback.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Names every serving certificate is valid for: loopback, and the in-cluster names of the services that
#: route to these processes (kube-apiserver checks an aggregated server's certificate against SERVICE.NS.svc).
SERVING_NAMES = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes.default.svc",
    "DNS:keda-metrics-apiserver.keda.svc",
    "DNS:keda-operator.keda.svc",
)
FRONT_PROXY_CLIENT = "front-proxy-client"


class _PkiFile:
    """One file of the PKI folder: ``ca_cert = _PkiFile("ca.crt")`` in :class:`Pki` makes ``pki.ca_cert``
    ``pki.dir / "ca.crt"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, pki: Pki, owner: type | None = None) -> Path:
        return pki.dir / self.name


@dataclass(frozen=True)
class Pki:
    dir: Path
    token: str

    ca_cert = _PkiFile("ca.crt")
    serving_cert = _PkiFile("serving.crt")
    serving_key = _PkiFile("serving.key")
    front_proxy_ca_cert = _PkiFile("front-proxy-ca.crt")
    front_proxy_client_cert = _PkiFile(f"{FRONT_PROXY_CLIENT}.crt")
    front_proxy_client_key = _PkiFile(f"{FRONT_PROXY_CLIENT}.key")
    service_account_key = _PkiFile("sa.key")
    service_account_pub = _PkiFile("sa.pub")
    token_file = _PkiFile("tokens.csv")


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("no 'openssl' on PATH: install it (Debian: openssl) and retry")
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _ca(dir: Path, name: str, subject: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={subject}",
             "-keyout", str(dir / f"{name}.key"), "-out", str(dir / f"{name}.crt"))


def _signed(dir: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    key, csr, ext = dir / f"{name}.key", dir / f"{name}.csr", dir / f"{name}.ext"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(csr))
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(dir / f"{ca}.crt"), "-CAkey", str(dir / f"{ca}.key"),
             "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(dir / f"{name}.crt"))
    csr.unlink()
    ext.unlink()


def make_pki(dir: Path) -> Pki:
    """Create every certificate, key and the admin token in ``dir`` (about a second)."""
    dir.mkdir(parents=True, exist_ok=True)
    dir.chmod(0o700)
    _ca(dir, "ca", "local-cluster-ca")
    _signed(dir, "serving", "ca", "/CN=local-cluster-serving",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=" + ",".join(SERVING_NAMES) + "\n")
    _ca(dir, "front-proxy-ca", "local-cluster-front-proxy-ca")
    _signed(dir, FRONT_PROXY_CLIENT, "front-proxy-ca", f"/CN={FRONT_PROXY_CLIENT}",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", str(dir / "sa.key"), "2048")
    _openssl("rsa", "-in", str(dir / "sa.key"), "-pubout", "-out", str(dir / "sa.pub"))
    token = secrets.token_hex(16)
    pki = Pki(dir, token)
    pki.token_file.write_text(f'{token},admin,admin,"system:masters"\n')
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> Path:
    """A kubeconfig for the admin token; what ``kubectl``, the controller manager and KEDA use."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: local\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {pki.ca_cert}\n"
        f"users:\n- name: admin\n  user:\n    token: {pki.token}\n"
        "contexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\n    namespace: default\n"
        "current-context: local\n"
    )
    path.chmod(0o600)
    return path
