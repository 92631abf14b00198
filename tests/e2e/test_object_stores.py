"""skopeo pushes and pulls through Lading on each object store — S3 (moto server), GCS
(fake-gcs-server) and Azure (Azurite) — with redirects on, so pulls follow a 307 to a
presigned (S3), signed (GCS, with a service-account key made here) or SAS (Azure) URL on
the emulator. A chunked upload continues on a restarted Lading: its state is in the store."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import skopeo
from tests.support.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    S3_KEY,
    S3_SECRET,
    azurite,
    fake_gcs_server,
    moto_server,
)
from tests.support.images import make_image, read_oci_layout, write_oci_layout
from tests.support.lading import base_env, lading_command, process
from tests.support.net import free_port, wait_http

pytestmark = pytest.mark.e2e

STORES = ["s3", "gcs", "azure"]


def service_account_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "lading-e2e",
        "private_key_id": "1",
        "private_key": pem,
        "client_email": "lading@lading-e2e.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }
    path.write_text(json.dumps(info))
    return path


@contextmanager
def store_env(store: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Starts the emulator, makes a bucket/container, yields Lading's REGISTRY_* settings."""
    name = f"lading-{uuid.uuid4().hex[:12]}"
    if store == "s3":
        import boto3

        with moto_server() as url:
            boto3.client(
                "s3",
                endpoint_url=url,
                aws_access_key_id=S3_KEY,
                aws_secret_access_key=S3_SECRET,
                region_name="us-east-1",
            ).create_bucket(Bucket=name)
            yield {
                "REGISTRY_STORAGE": "s3",
                "REGISTRY_STORAGE_S3_BUCKET": name,
                "REGISTRY_STORAGE_S3_REGIONENDPOINT": url,
                "REGISTRY_STORAGE_S3_ACCESSKEY": S3_KEY,
                "REGISTRY_STORAGE_S3_SECRETKEY": S3_SECRET,
                "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
                "REGISTRY_STORAGE_S3_SECURE": "false",
            }
    elif store == "gcs":
        from pipeline.storage.gcs import GCSDriver

        with fake_gcs_server() as url:
            GCSDriver(name, endpoint=url).client.create_bucket(name)
            yield {
                "REGISTRY_STORAGE": "gcs",
                "REGISTRY_STORAGE_GCS_BUCKET": name,
                "REGISTRY_STORAGE_GCS_ENDPOINT": url,
                "REGISTRY_STORAGE_GCS_KEYFILE": str(service_account_key(workdir / "gcs-key.json")),
                "REGISTRY_STORAGE_GCS_ROOTDIRECTORY": "/registry",
            }
    else:
        from pipeline.storage.azure import AzureDriver

        with azurite() as url:
            AzureDriver(AZURITE_ACCOUNT, AZURITE_KEY, name, service_url=url).container.create_container()
            yield {
                "REGISTRY_STORAGE": "azure",
                "REGISTRY_STORAGE_AZURE_ACCOUNTNAME": AZURITE_ACCOUNT,
                "REGISTRY_STORAGE_AZURE_ACCOUNTKEY": AZURITE_KEY,
                "REGISTRY_STORAGE_AZURE_CONTAINER": name,
                "REGISTRY_STORAGE_AZURE_SERVICEURL": url,
            }


@contextmanager
def lading_on(store_settings: dict[str, str], workdir: Path) -> Iterator[str]:
    """`lading serve` (embedded) on the object store, redirects on. Yields host:port."""
    port = free_port()
    env = base_env(workdir / "unused", port, REGISTRY_STORAGE_REDIRECT_DISABLE="false", **store_settings)
    env.pop("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
    for key in ("REGISTRY_CELERY_BROKER_URL", "REGISTRY_CELERY_RESULT_BACKEND"):
        env.pop(key, None)
    with process([*lading_command(), "serve"], env, workdir / f"lading-{port}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc)
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module", params=STORES)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    workdir = tmp_path_factory.mktemp(f"store-{request.param}")
    with store_env(request.param, workdir) as settings:
        yield settings


def test_skopeo_push_and_pull_through_redirects(store: dict[str, str], tmp_path: Path) -> None:
    image = make_image([1, 300_000, 6_000_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    repo = f"e2e/{uuid.uuid4().hex[:8]}/app"
    with lading_on(store, tmp_path) as lading:
        skopeo.copy(f"oci:{layout}:v1", f"docker://{lading}/{repo}:v1")
        assert skopeo.inspect(f"docker://{lading}/{repo}:v1")["Digest"] == image.manifest_digest

        big = image.layers[-1]
        response = httpx.get(f"http://{lading}/v2/{repo}/blobs/{big.digest}", timeout=30)
        assert response.status_code == 307, "pulls go to the object store"
        location = response.headers["location"]
        assert location.startswith("http://127.0.0.1:") and f"{lading}" not in location
        assert hashlib.sha256(httpx.get(location, timeout=60).content).hexdigest() == big.digest.split(":")[1]

        out = tmp_path / "pulled"
        skopeo.copy(f"docker://{lading}/{repo}:v1", f"oci:{out}:v1")
    pulled = read_oci_layout(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data, digest


def test_chunked_upload_continues_on_a_restarted_lading(store: dict[str, str], tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB in three chunks, the first past S3's 5 MiB part
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    chunks = [data[: 6 * 1024 * 1024], data[6 * 1024 * 1024 : 8 * 1024 * 1024], data[8 * 1024 * 1024 :]]
    repo = f"e2e/{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        (tmp_path / "first").mkdir()
        lading = stack.enter_context(lading_on(store, tmp_path / "first"))
        started = httpx.post(f"http://{lading}/v2/{repo}/blobs/uploads/", timeout=30)
        assert started.status_code == 202
        location = started.headers["location"]
        path = location if location.startswith("/") else "/" + location.split("/", 3)[3]
        sent = 0
        for chunk in chunks[:2]:
            r = httpx.patch(
                f"http://{lading}{path}",
                content=chunk,
                headers={
                    "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                    "Content-Type": "application/octet-stream",
                },
                timeout=60,
            )
            assert r.status_code == 202, r.text
            sent += len(chunk)
            path = r.headers["location"] if r.headers["location"].startswith("/") else path
        stack.close()  # the API stops; nothing about the upload stays in its memory

    (tmp_path / "second").mkdir()
    with lading_on(store, tmp_path / "second") as lading:
        status = httpx.get(f"http://{lading}{path}", timeout=30)
        assert status.status_code == 204 and status.headers["range"] == f"0-{sent - 1}"
        r = httpx.put(
            f"http://{lading}{path}",
            params={"digest": digest},
            content=chunks[2],
            headers={"Content-Range": f"{sent}-{len(data) - 1}", "Content-Type": "application/octet-stream"},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        pulled = httpx.get(f"http://{lading}/v2/{repo}/blobs/{digest}", timeout=60, follow_redirects=True)
        assert pulled.content == data
