"""GCSDriver: the storage contract against fake-gcs-server (a real GCS JSON API on
127.0.0.1), plus what only GCS needs — compose-based appends, signed-URL redirects, a key
prefix, and translation of throttling / 5xx / connection failures to StorageUnavailable."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from pipeline.config import StorageSettings
from pipeline.errors import PathNotFound, StorageError, StorageUnavailable
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.gcs import CHUNK_UNIT, GCSDriver, _translate
from pipeline.storage.objects import HIDDEN
from tests.pipeline.storage.contract import DriverContract, payload
from tests.support.emulators import fake_gcs_server
from tests.support.net import free_port


class CountingSession(requests.Session):
    """Counts the request body bytes the client sends (the wrapped transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        body = request.body
        if isinstance(body, (bytes, bytearray)):
            self.sent += len(body)
        elif isinstance(body, str):
            self.sent += len(body.encode())
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with fake_gcs_server() as url:
        yield url


def new_driver(endpoint: str, http: requests.Session | None = None, **options: Any) -> GCSDriver:
    bucket = f"lading-{uuid.uuid4().hex[:16]}"
    options.setdefault("chunk_size", CHUNK_UNIT * 4)
    driver = GCSDriver(bucket, endpoint=endpoint, lock_timeout=1.0, retry_deadline=10.0, http=http, **options)
    driver.client.create_bucket(bucket)
    return driver


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A service-account key made here (signing is local; nothing is sent to Google)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "lading-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "lading@lading-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }


def hidden_objects(driver: GCSDriver) -> list[str]:
    return [b.name for b in driver.client.list_blobs(driver.bucket_name) if HIDDEN in b.name]


class TestGCSDriver(DriverContract):
    @pytest.fixture
    def session(self) -> CountingSession:
        return CountingSession()

    @pytest.fixture
    def gcs(self, endpoint: str, session: CountingSession) -> GCSDriver:
        return new_driver(endpoint, http=session)

    @pytest.fixture
    def driver(self, gcs: GCSDriver) -> StorageDriver:
        return gcs

    @pytest.fixture
    def leftovers(self, gcs: GCSDriver) -> Callable[[], list[str]]:
        return lambda: hidden_objects(gcs)

    @pytest.fixture
    def abandon(self) -> Callable[[StorageDriver, str], object]:
        """A dead appender leaves its part object when it dies after the part landed and
        before the compose (a new-file writer leaves only an unlisted resumable session)."""

        def crash(d: StorageDriver, path: str) -> object:
            d.put_content(path, b"stored")
            w = d.writer(path, append=True)
            w.write(payload(3 * CHUNK_UNIT, seed=7))
            w._inner.commit()  # type: ignore[attr-defined]  # the part lands; no compose follows
            return w

        return crash

    @pytest.fixture
    def bytes_sent(self, session: CountingSession) -> Callable[[], int]:
        return lambda: session.sent


@pytest.fixture
def gcs(endpoint: str) -> GCSDriver:
    return new_driver(endpoint)


@pytest.fixture
def d(gcs: GCSDriver) -> Iterator[StorageDriver]:
    yield CheckedDriver(gcs)
    assert hidden_objects(gcs) == []


def test_append_composes_and_keeps_one_object(d: StorageDriver, gcs: GCSDriver) -> None:
    base = payload(3 * CHUNK_UNIT + 5, seed=5)
    d.put_content("/up/data", base)
    w = d.writer("/up/data", append=True)
    tail = payload(9 * CHUNK_UNIT + 1, seed=6)  # streams through a resumable session
    w.write(tail)
    assert d.get_content("/up/data") == base, "nothing changes before commit"
    assert d.list("/") == ["/up"], "the part object stays hidden"
    w.commit()
    w.close()
    assert d.get_content("/up/data") == base + tail
    assert [b.name for b in gcs.client.list_blobs(gcs.bucket_name)] == ["up/data"]


def test_append_that_adds_nothing_rewrites_nothing(d: StorageDriver, gcs: GCSDriver) -> None:
    d.put_content("/up/data", b"abc")
    generation = gcs.bucket.get_blob("up/data").generation
    w = d.writer("/up/data", append=True)
    w.commit()
    assert gcs.bucket.get_blob("up/data").generation == generation


def test_signed_url_redirect_serves_the_object(endpoint: str, service_account_info: dict[str, str]) -> None:
    """The URL is a V4 signature made with the key; fake-gcs-server serves the object at it
    but does not check signatures (real GCS does: that part is not testable here)."""
    gcs = new_driver(endpoint, credentials=service_account_info)
    d = CheckedDriver(gcs)
    assert d.capabilities.redirect
    d.put_content("/docker/registry/v2/blobs/sha256/ab/abc/data", b"layer bytes")
    url = d.redirect_url("/docker/registry/v2/blobs/sha256/ab/abc/data")
    assert url is not None and "X-Goog-Signature=" in url and "X-Goog-Credential=" in url
    assert url.startswith(f"{endpoint}/{gcs.bucket_name}/docker/registry/v2/blobs/sha256/ab/abc/data?")
    assert httpx.get(url, timeout=10).content == b"layer bytes"


def test_no_key_no_redirect(gcs: GCSDriver) -> None:
    assert not gcs.capabilities.redirect


def test_root_directory_prefixes_every_key(endpoint: str) -> None:
    gcs = new_driver(endpoint, root_directory="/registry/prod")
    d = CheckedDriver(gcs)
    d.put_content("/docker/registry/v2/x", b"1")
    assert [b.name for b in gcs.client.list_blobs(gcs.bucket_name)] == ["registry/prod/docker/registry/v2/x"]
    assert d.list("/") == ["/docker"]
    v2 = "/docker/registry/v2"
    assert [i.path for i in d.walk("/")] == ["/docker", "/docker/registry", v2, f"{v2}/x"]
    d.delete("/")
    assert list(gcs.client.list_blobs(gcs.bucket_name)) == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_unavailable(status: int) -> None:
    from google.api_core import exceptions as gexc

    assert isinstance(_translate(gexc.from_http_status(status, "boom"), "/f"), StorageUnavailable)


def test_permanent_errors_are_not_retryable() -> None:
    from google.api_core import exceptions as gexc

    err = _translate(gexc.Forbidden("no access"), "/f")
    assert isinstance(err, StorageError) and not isinstance(err, (StorageUnavailable, PathNotFound))
    assert isinstance(_translate(gexc.NotFound("gone"), "/f"), PathNotFound)


def test_unreachable_endpoint_is_unavailable() -> None:
    dead = GCSDriver("bucket", endpoint=f"http://127.0.0.1:{free_port()}", retry_deadline=1.0, timeout=2.0)
    with pytest.raises(StorageUnavailable):
        CheckedDriver(dead).get_content("/f")


def test_factory_builds_gcs_from_settings(endpoint: str) -> None:
    bucket = f"lading-{uuid.uuid4().hex[:16]}"
    settings = StorageSettings(
        driver="gcs", gcs_bucket=bucket, gcs_endpoint=endpoint, gcs_rootdirectory="/prefix"
    )
    d = driver_from_settings(settings)
    assert isinstance(d, CheckedDriver) and isinstance(d.inner, GCSDriver)
    d.inner.client.create_bucket(bucket)
    d.put_content("/a", b"1")
    assert d.get_content("/a") == b"1"
    assert d.inner.bucket.get_blob("prefix/a").size == 1
