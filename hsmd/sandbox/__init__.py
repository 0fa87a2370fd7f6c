"""hsmd sandbox: a local Kubernetes API server for tests, demos and development.

``run_sandbox()`` starts one on a free loopback port and yields a ``SandboxHandle`` (url,
kubeconfig path with an admin bearer token, fault injection); ``hsmd sandbox`` (cli.py) runs the
same thing as a process. Components under test talk to it only through the ordinary
``kubernetes`` client, ``kubernetes.dynamic`` and ``kubernetes.core`` — exactly as to a cluster.

Modules: cluster.py (API semantics and controllers), server.py (HTTP, watch streams, discovery),
store.py (objects, resourceVersions, history, journal), strategies.py (per-kind rules),
schema.py (CRD structural schemas), patch.py / managed.py (patch formats, server-side apply),
auth.py / rbac.py (tokens, TokenReview, SubjectAccessReview), faults.py, tables.py.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hsmd.sandbox.cluster import Cluster
from hsmd.sandbox.faults import FaultInjector, RemoteFaults
from hsmd.sandbox.server import SandboxServer

__all__ = ["FaultInjector", "RemoteFaults", "Sandbox", "SandboxHandle", "run_sandbox", "start_sandbox",
           "write_kubeconfig"]

DEFAULT_HISTORY_WINDOW = 10000


@dataclass
class SandboxHandle:
    """What a test needs from a running sandbox."""

    url: str
    kubeconfig: str
    admin_token: str
    faults: FaultInjector
    cluster: Cluster
    ca_file: str | None = None

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this sandbox (admin user)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
        return client.ApiClient(configuration)


class Sandbox:
    """A running sandbox server (thread in this process). ``stop()`` ends it and its watches."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, state_dir: str | Path | None = None,
                 tokens_file: str | None = None, require_auth: bool = False, tls: bool = False,
                 history_window: int = DEFAULT_HISTORY_WINDOW, bookmark_interval: float = 60.0,
                 watch_timeout: float = 1800.0, kubeconfig_path: str | Path | None = None,
                 admin_token: str | None = None) -> None:
        # a scratch directory only when something has no other home (kubeconfig, TLS files)
        need_tmp = kubeconfig_path is None or (tls and not state_dir)
        self._tmp = tempfile.mkdtemp(prefix="hsmd-sandbox-") if need_tmp else None
        try:
            self._start(host, port, state_dir, tokens_file, require_auth, tls, history_window, bookmark_interval,
                        watch_timeout, kubeconfig_path, admin_token)
        except BaseException:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _start(self, host: str, port: int, state_dir: str | Path | None, tokens_file: str | None,
               require_auth: bool, tls: bool, history_window: int, bookmark_interval: float, watch_timeout: float,
               kubeconfig_path: str | Path | None, admin_token: str | None) -> None:
        self.cluster = Cluster(state_dir=state_dir, tokens_file=tokens_file, history_window=history_window,
                               admin_token=admin_token)
        ssl_context = None
        self.ca_file: str | None = None
        ca_pem = b""
        if tls:
            cert_dir = Path(state_dir) / "tls" if state_dir else Path(str(self._tmp)) / "tls"
            ca_pem, cert_file, key_file = _serving_cert(cert_dir, host)
            self.ca_file = str(cert_dir / "ca.crt")
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_context.load_cert_chain(cert_file, key_file)
            self.cluster.ca_bundle = ca_pem.decode()
        try:
            self.server = SandboxServer((host, port), self.cluster, require_auth=require_auth,
                                        ssl_context=ssl_context, bookmark_interval=bookmark_interval,
                                        watch_timeout=watch_timeout)
        except Exception:
            self.cluster.close()
            raise
        self.url = self.server.url
        self.kubeconfig = str(kubeconfig_path or Path(str(self._tmp)) / "kubeconfig")
        write_kubeconfig(self.kubeconfig, self.url, self.cluster.auth.admin_token, ca_pem or None)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="sandbox-http", daemon=True)
        self._thread.start()

    @property
    def handle(self) -> SandboxHandle:
        return SandboxHandle(url=self.url, kubeconfig=self.kubeconfig, admin_token=self.cluster.auth.admin_token,
                             faults=self.server.faults, cluster=self.cluster, ca_file=self.ca_file)

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(timeout=5)
        self.cluster.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def start_sandbox(**kwargs: Any) -> Sandbox:
    return Sandbox(**kwargs)


@contextmanager
def run_sandbox(*, state_dir: str | Path | None = None, tokens_file: str | None = None, require_auth: bool = False,
                tls: bool = False, history_window: int = DEFAULT_HISTORY_WINDOW, bookmark_interval: float = 60.0,
                watch_timeout: float = 1800.0, host: str = "127.0.0.1", port: int = 0,
                kubeconfig_path: str | Path | None = None) -> Iterator[SandboxHandle]:
    """Run a sandbox API server on a free loopback port for the duration of the block."""
    sandbox = Sandbox(host=host, port=port, state_dir=state_dir, tokens_file=tokens_file,
                      require_auth=require_auth, tls=tls, history_window=history_window,
                      bookmark_interval=bookmark_interval, watch_timeout=watch_timeout,
                      kubeconfig_path=kubeconfig_path)
    try:
        yield sandbox.handle
    finally:
        sandbox.stop()


def write_kubeconfig(path: str | Path, url: str, token: str, ca_pem: bytes | None = None,
                     namespace: str = "default") -> None:
    """A kubeconfig with one cluster, one admin user (bearer token) and one current context."""
    cluster: dict[str, Any] = {"server": url}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "hsmd-sandbox", "cluster": cluster}],
        "users": [{"name": "sandbox-admin", "user": {"token": token}}],
        "contexts": [{"name": "hsmd-sandbox", "context": {"cluster": "hsmd-sandbox", "user": "sandbox-admin",
                                                          "namespace": namespace}}],
        "current-context": "hsmd-sandbox",
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(target)


def _serving_cert(directory: Path, host: str) -> tuple[bytes, str, str]:
    """A CA and a serving certificate for ``host``/localhost/127.0.0.1 (kept in ``directory``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ca_file.read_bytes(), str(cert_file), str(key_file)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmd-sandbox-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            sans.append(x509.IPAddress(ip))
    except ValueError:
        sans.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    ca_file.write_bytes(ca_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_pem, str(cert_file), str(key_file)
