"""distribution's `http.tls` on `lading serve`: HTTPS only, mutual TLS, minimum version.

Each test generates its own CA (server certificate for 127.0.0.1, client certificates) with
`cryptography`, starts a real `lading serve CONFIG`, and drives skopeo with
`--dest-cert-dir`/`--src-cert-dir` (the directory layout containers/image reads: `*.crt`
CAs, `client.cert` + `client.key`). Before TLS was implemented, `http.tls` was ignored with
a warning and the same configuration served plain HTTP and accepted pushes.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.lading.procs import Running, lading_command, process_env, running
from tests.support import skopeo
from tests.support.images import make_image, read_oci_layout, write_oci_layout
from tests.support.net import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


class CA:
    """A throwaway certificate authority."""

    def __init__(self, directory: Path, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, directory: Path, cn: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = directory / f"{cn}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(cert_path, _write_key(key, directory / f"{cn}.key"))


@dataclass
class Pki:
    server_ca: CA
    client_ca: CA
    server: Issued
    client: Issued
    rogue_client: Issued  # signed by a CA the registry does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, rogue_ca = CA(d, "server-ca"), CA(d, "client-ca"), CA(d, "rogue-ca")
    return Pki(
        server_ca,
        client_ca,
        server_ca.issue(d, "registry", server=True),
        client_ca.issue(d, "client", server=False),
        rogue_ca.issue(d, "rogue", server=False),
    )


def cert_dir(directory: Path, pki: Pki, client: Issued | None = None) -> Path:
    """A containers/image certs.d directory: the server CA, and a client pair if given."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(pki.server_ca.path.read_bytes())
    if client is not None:
        (directory / "client.cert").write_bytes(client.cert.read_bytes())
        (directory / "client.key").write_bytes(client.key.read_bytes())
    return directory


def write_config(tmp: Path, port: int, tls: dict[str, object]) -> Path:
    config = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(tmp / "root")}},
        "http": {"addr": f"127.0.0.1:{port}", "tls": tls},
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_tls(port: int, context: ssl.SSLContext, server: Running, timeout: float = 60.0) -> None:
    """Wait until the port completes a TLS handshake with `context`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"lading exited with {server.proc.returncode}:\n{server.output}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    raise AssertionError(f"no TLS on port {port} within {timeout}s:\n{server.output}")


def client_context(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.server_ca.path))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


ServeTls = Callable[[dict[str, object]], tuple[Running, int]]


@pytest.fixture
def serve_tls(tmp_path: Path) -> Iterator[ServeTls]:
    """Start `lading serve` with `http.tls` set to the argument; (process, port)."""
    with ExitStack() as stack:

        def start(tls: dict[str, object]) -> tuple[Running, int]:
            port = free_port()
            config = write_config(tmp_path, port, tls)
            args = [*lading_command(), "serve", str(config)]
            return stack.enter_context(running(args, process_env(), cwd=tmp_path)), port

        yield start


def skopeo_fails(*args: str) -> str:
    cmd = [skopeo.skopeo_binary(), "--insecure-policy", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, f"{' '.join(cmd)} succeeded:\n{result.stdout}"
    return result.stderr.lower()


def plain_http_status(port: int) -> int | None:
    """The status a plain-HTTP GET /v2/ gets, or None if the server does not answer HTTP."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_skopeo_pushes_and_pulls_over_https_only(serve_tls: ServeTls, pki: Pki, tmp_path: Path) -> None:
    server, port = serve_tls({"certificate": str(pki.server.cert), "key": str(pki.server.key)})
    wait_tls(port, client_context(pki), server)
    image = make_image([1200, 70_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    certs = cert_dir(tmp_path / "certs", pki)
    ref = f"docker://127.0.0.1:{port}/tls/app:v1"

    skopeo.skopeo("copy", f"--dest-cert-dir={certs}", f"oci:{layout}:v1", ref)
    out = tmp_path / "pulled"
    skopeo.skopeo("copy", f"--src-cert-dir={certs}", ref, f"oci:{out}:v1")
    pulled = read_oci_layout(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data, digest

    # The same port never answers plain HTTP (no fallback), and a client that does not
    # trust the registry's CA is refused by verification.
    assert plain_http_status(port) in (None, 400)
    stderr = skopeo_fails("inspect", f"docker://127.0.0.1:{port}/tls/app:v1")
    assert "certificate" in stderr or "x509" in stderr, stderr


def test_client_certificate_required_with_clientcas(serve_tls: ServeTls, pki: Pki, tmp_path: Path) -> None:
    tls = {
        "certificate": str(pki.server.cert),
        "key": str(pki.server.key),
        "clientcas": [str(pki.client_ca.path)],
    }
    server, port = serve_tls(tls)
    wait_tls(port, client_context(pki, pki.client), server)
    image = make_image([900])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    ref = f"docker://127.0.0.1:{port}/mtls/app:v1"

    without = cert_dir(tmp_path / "no-client", pki)
    skopeo_fails("copy", f"--dest-cert-dir={without}", f"oci:{layout}:v1", ref)
    rogue = cert_dir(tmp_path / "rogue", pki, pki.rogue_client)
    skopeo_fails("copy", f"--dest-cert-dir={rogue}", f"oci:{layout}:v1", ref)
    with_client = cert_dir(tmp_path / "client", pki, pki.client)
    skopeo.skopeo("copy", f"--dest-cert-dir={with_client}", f"oci:{layout}:v1", ref)
    inspected = skopeo.inspect(ref, f"--cert-dir={with_client}")
    assert inspected["Digest"] == image.manifest_digest


def test_minimumtls_13_refuses_a_tls12_client(serve_tls: ServeTls, pki: Pki) -> None:
    tls = {"certificate": str(pki.server.cert), "key": str(pki.server.key), "minimumtls": "tls1.3"}
    server, port = serve_tls(tls)
    wait_tls(port, client_context(pki), server)
    old = client_context(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_ciphersuites_limit_tls12_suites(serve_tls: ServeTls, pki: Pki) -> None:
    tls = {
        "certificate": str(pki.server.cert),
        "key": str(pki.server.key),
        "ciphersuites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    }
    server, port = serve_tls(tls)
    wait_tls(port, client_context(pki), server)
    tls12 = client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        tls12.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"  # type: ignore[index]
    other = client_context(pki)
    other.maximum_version = ssl.TLSVersion.TLSv1_2
    other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        other.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"letsencrypt": {"cachefile": "/tmp/le", "email": "a@example.com"}}, "http.tls.letsencrypt"),
        ({"minimumtls": "tls1.0"}, "http.tls.minimumtls"),
        ({"ciphersuites": ["TLS_RSA_WITH_RC4_128_SHA"]}, "http.tls.ciphersuites"),
        ({"clientcas": ["/nonexistent/ca.pem"]}, "http.tls.clientcas"),
    ],
)
def test_tls_lading_cannot_honour_stops_startup(
    pki: Pki, tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    port = free_port()
    tls: dict[str, object] = {"certificate": str(pki.server.cert), "key": str(pki.server.key), **extra}
    config = write_config(tmp_path, port, tls)
    result = subprocess.run(
        [*lading_command(), "serve", str(config)],
        env=process_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert plain_http_status(port) is None
