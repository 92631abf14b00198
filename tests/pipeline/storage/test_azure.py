"""AzureDriver: the storage contract against Azurite (a real Blob service on 127.0.0.1),
plus what only Azure needs — block-list appends, SAS redirects, a key prefix, and
translation of throttling / 5xx / connection failures to StorageUnavailable."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from azure.core import exceptions as aexc

from pipeline.config import StorageSettings
from pipeline.errors import PathNotFound, StorageError, StorageUnavailable
from pipeline.storage.azure import AzureDriver, _translate
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.factory import driver_from_settings
from tests.pipeline.storage.contract import DriverContract, payload
from tests.support.emulators import AZURITE_ACCOUNT, AZURITE_KEY, azurite
from tests.support.net import free_port

KiB = 1024


class SentBytes:
    """Counts the request body bytes the client sends (azure-core's raw request hook)."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, request: Any) -> None:
        body = request.http_request.body
        if isinstance(body, (bytes, bytearray)):
            self.sent += len(body)
        elif isinstance(body, str):
            self.sent += len(body.encode())
        elif body is not None:
            self.sent += int(request.http_request.headers.get("Content-Length", 0) or 0)


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with azurite() as url:
        yield url


def new_driver(service_url: str, hook: SentBytes | None = None, **options: Any) -> AzureDriver:
    container = f"lading-{uuid.uuid4().hex[:16]}"
    options.setdefault("chunk_size", 256 * KiB)
    driver = AzureDriver(
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        container,
        service_url=service_url,
        lock_timeout=1.0,
        client_options={"raw_request_hook": hook} if hook else None,
        **options,
    )
    driver.container.create_container()
    return driver


def uncommitted_blobs(driver: AzureDriver) -> list[str]:
    """Blobs holding uncommitted blocks only (a dead writer's; listed only on request)."""
    committed = {b.name for b in driver.container.list_blobs()}
    every = driver.container.list_blobs(include=["uncommittedblobs"])
    return sorted(b.name for b in every if b.name not in committed)


class TestAzureDriver(DriverContract):
    @pytest.fixture
    def counter(self) -> SentBytes:
        return SentBytes()

    @pytest.fixture
    def driver(self, service_url: str, counter: SentBytes) -> StorageDriver:
        return new_driver(service_url, counter)

    @pytest.fixture
    def unfinished(self, driver: AzureDriver) -> Callable[[], list[str]]:
        return lambda: uncommitted_blobs(driver)

    @pytest.fixture
    def bytes_sent(self, counter: SentBytes) -> Callable[[], int]:
        return lambda: counter.sent


@pytest.fixture
def az(service_url: str) -> AzureDriver:
    return new_driver(service_url)


@pytest.fixture
def d(az: AzureDriver) -> StorageDriver:
    return CheckedDriver(az)


def test_appends_extend_the_committed_block_list(d: StorageDriver, az: AzureDriver) -> None:
    d.put_content("/up/data", b"")
    chunks = [payload(300 * KiB, seed=1), payload(10, seed=2), payload(600 * KiB, seed=3)]
    for chunk in chunks:
        w = d.writer("/up/data", append=True)
        w.write(chunk)
        w.commit()
        w.close()
    committed, _ = az._blob("up/data").get_block_list("committed")
    assert sum(b.size for b in committed) == sum(map(len, chunks))
    assert len(committed) == 2 + 1 + 3  # 256 KiB blocks: earlier blocks are never re-staged
    assert d.get_content("/up/data") == b"".join(chunks)


def test_append_to_a_blob_written_in_one_put_stages_it_once(d: StorageDriver, az: AzureDriver) -> None:
    d.put_content("/up/data", b"hello")
    for tail in (b" world", b"!"):
        w = d.writer("/up/data", append=True)
        w.write(tail)
        w.commit()
    assert d.get_content("/up/data") == b"hello world!"
    committed, _ = az._blob("up/data").get_block_list("committed")
    assert [b.size for b in committed] == [5, 6, 1]


def test_append_that_adds_nothing_rewrites_nothing(d: StorageDriver, az: AzureDriver) -> None:
    d.put_content("/up/data", b"abc")
    etag = az._blob("up/data").get_blob_properties().etag
    w = d.writer("/up/data", append=True)
    w.commit()
    assert az._blob("up/data").get_blob_properties().etag == etag


def test_sas_redirect_serves_the_object(d: StorageDriver, az: AzureDriver) -> None:
    assert d.capabilities.redirect
    d.put_content("/docker/registry/v2/blobs/sha256/ab/abc/data", b"layer bytes")
    url = d.redirect_url("/docker/registry/v2/blobs/sha256/ab/abc/data")
    assert url is not None and "sig=" in url and "sp=r" in url
    assert httpx.get(url, timeout=10).content == b"layer bytes"
    plain = url.split("?", 1)[0]
    assert httpx.get(plain, timeout=10).status_code in (403, 404), "the container itself is private"


def test_root_directory_prefixes_every_key(service_url: str) -> None:
    az = new_driver(service_url, root_directory="/registry/prod")
    d = CheckedDriver(az)
    d.put_content("/docker/registry/v2/x", b"1")
    assert [b.name for b in az.container.list_blobs()] == ["registry/prod/docker/registry/v2/x"]
    assert d.list("/") == ["/docker"]
    v2 = "/docker/registry/v2"
    assert [i.path for i in d.walk("/")] == ["/docker", "/docker/registry", v2, f"{v2}/x"]
    d.delete("/")
    assert list(az.container.list_blobs()) == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_unavailable(status: int) -> None:
    class Response:
        status_code = status
        reason = "busy"
        headers: dict[str, str] = {}

        def text(self) -> str:
            return ""

    error = aexc.HttpResponseError(message="busy")
    error.status_code = status
    assert isinstance(_translate(error, "/f"), StorageUnavailable)


def test_permanent_errors_are_not_retryable() -> None:
    error = aexc.ClientAuthenticationError(message="bad key")
    error.status_code = 403
    err = _translate(error, "/f")
    assert isinstance(err, StorageError) and not isinstance(err, (StorageUnavailable, PathNotFound))
    assert isinstance(_translate(aexc.ResourceNotFoundError(message="gone"), "/f"), PathNotFound)


def test_unreachable_endpoint_is_unavailable() -> None:
    dead = AzureDriver(
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        "container",
        service_url=f"http://127.0.0.1:{free_port()}/{AZURITE_ACCOUNT}",
        max_attempts=1,
        connect_timeout=2.0,
    )
    with pytest.raises(StorageUnavailable):
        CheckedDriver(dead).get_content("/f")


def test_factory_builds_azure_from_settings(service_url: str) -> None:
    container = f"lading-{uuid.uuid4().hex[:16]}"
    settings = StorageSettings(
        driver="azure",
        azure_accountname=AZURITE_ACCOUNT,
        azure_accountkey=AZURITE_KEY,
        azure_container=container,
        azure_serviceurl=service_url,
        azure_rootdirectory="/prefix",
    )
    d = driver_from_settings(settings)
    assert isinstance(d, CheckedDriver) and isinstance(d.inner, AzureDriver)
    d.inner.container.create_container()
    d.put_content("/a", b"1")
    assert d.get_content("/a") == b"1"
    assert d.inner._blob("prefix/a").get_blob_properties().size == 1
