"""S3Driver: the storage contract against a real S3 API (a moto server on 127.0.0.1), plus
what only an object store needs — server-side append copies, presigned redirects, a key
prefix, and translation of throttling / 5xx / connection failures to StorageUnavailable."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from botocore.stub import Stubber

from pipeline.config import StorageSettings
from pipeline.errors import PathNotFound, StorageError, StorageUnavailable
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.s3 import MIN_PART, S3Driver
from tests.pipeline.storage.contract import DriverContract, payload
from tests.support.emulators import moto_server
from tests.support.net import free_port

KEY, SECRET = "testing", "testing"  # moto accepts any credentials


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server in its own process, on a free local port."""
    with moto_server() as url:
        yield url


def new_driver(endpoint: str, **options: Any) -> S3Driver:
    bucket = f"lading-{uuid.uuid4().hex[:16]}"
    driver = S3Driver(
        bucket,
        endpoint_url=endpoint,
        force_path_style=True,
        secure=False,
        chunk_size=MIN_PART,
        lock_timeout=1.0,
        access_key=KEY,
        secret_key=SECRET,
        **options,
    )
    driver.client.create_bucket(Bucket=bucket)
    return driver


def open_uploads(driver: S3Driver) -> list[str]:
    listing = driver.client.list_multipart_uploads(Bucket=driver.bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


class TestS3Driver(DriverContract):
    @pytest.fixture
    def s3(self, endpoint: str) -> S3Driver:
        return new_driver(endpoint)

    @pytest.fixture
    def driver(self, s3: S3Driver) -> StorageDriver:
        return s3

    @pytest.fixture
    def leftovers(self, s3: S3Driver) -> Callable[[], list[str]]:
        return lambda: open_uploads(s3)

    @pytest.fixture
    def bytes_sent(self, s3: S3Driver) -> Callable[[], int]:
        counter = [0]

        def count(request: Any, **_: Any) -> None:
            body = request.body
            if isinstance(body, (bytes, bytearray)):
                counter[0] += len(body)
            elif body is not None:
                counter[0] += int(request.headers.get("Content-Length", 0) or 0)

        s3.client.meta.events.register("before-send.s3", count)
        return lambda: counter[0]

    @pytest.fixture
    def resent_below(self) -> int:
        return MIN_PART


@pytest.fixture
def s3(endpoint: str) -> S3Driver:
    return new_driver(endpoint)


@pytest.fixture
def d(s3: S3Driver) -> Iterator[StorageDriver]:
    yield CheckedDriver(s3)
    assert open_uploads(s3) == []


def test_append_to_a_large_object_copies_server_side(d: StorageDriver) -> None:
    base = payload(MIN_PART + 123, seed=5)
    d.put_content("/up/data", base)
    w = d.writer("/up/data", append=True)
    assert w.size == len(base)
    tail = payload(MIN_PART + 7, seed=6)  # also fills one part of its own
    w.write(tail)
    assert d.get_content("/up/data") == base, "nothing changes before commit"
    w.commit()
    assert d.get_content("/up/data") == base + tail
    w2 = d.writer("/up/data", append=True)
    w2.write(b"!")
    w2.commit()
    assert d.get_content("/up/data") == base + tail + b"!"


def test_cancelled_append_to_a_large_object_keeps_it(d: StorageDriver) -> None:
    base = payload(MIN_PART + 1, seed=7)
    d.put_content("/up/data", base)
    w = d.writer("/up/data", append=True)
    w.write(payload(MIN_PART, seed=8))
    w.cancel()
    assert d.get_content("/up/data") == base


def test_append_that_adds_nothing_rewrites_nothing(d: StorageDriver, s3: S3Driver) -> None:
    d.put_content("/up/data", b"abc")
    etag = s3.client.head_object(Bucket=s3.bucket, Key="up/data")["ETag"]
    w = d.writer("/up/data", append=True)
    w.commit()
    assert s3.client.head_object(Bucket=s3.bucket, Key="up/data")["ETag"] == etag


def test_purge_keeps_an_old_multipart_upload_given_a_part_recently(s3: S3Driver) -> None:
    # A write started long ago that still receives parts is a slow upload, not a dead one:
    # purge goes by the newest part (ListParts' LastModified), not only by `Initiated`.
    alive = s3.client.create_multipart_upload(Bucket=s3.bucket, Key="uploads/slow/data")
    s3.client.upload_part(
        Bucket=s3.bucket, Key="uploads/slow/data", UploadId=alive["UploadId"], PartNumber=1, Body=b"x" * 10
    )
    s3.client.create_multipart_upload(Bucket=s3.bucket, Key="uploads/dead/data")  # no part since
    before = datetime.now(UTC) - timedelta(minutes=10)
    initiated = {
        u["Key"]: u["Initiated"] for u in s3.client.list_multipart_uploads(Bucket=s3.bucket)["Uploads"]
    }
    # The emulator reports every upload as started long ago (moto: 2010): both are "old".
    assert all(started < before for started in initiated.values()), initiated
    purged = s3.purge_unfinished_writes(before)
    assert [(w.path, w.size) for w in purged] == [("/uploads/dead/data", 0)]
    assert open_uploads(s3) == ["uploads/slow/data"]
    s3.client.abort_multipart_upload(Bucket=s3.bucket, Key="uploads/slow/data", UploadId=alive["UploadId"])


def test_presigned_redirect_serves_the_object(d: StorageDriver) -> None:
    assert d.capabilities.redirect
    d.put_content("/docker/registry/v2/blobs/sha256/ab/abc/data", b"layer bytes")
    url = d.redirect_url("/docker/registry/v2/blobs/sha256/ab/abc/data")
    assert url is not None
    assert httpx.get(url, timeout=10).content == b"layer bytes"


def test_root_directory_prefixes_every_key(endpoint: str) -> None:
    s3 = new_driver(endpoint, root_directory="/registry/prod")
    d = CheckedDriver(s3)
    d.put_content("/docker/registry/v2/x", b"1")
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert keys == ["registry/prod/docker/registry/v2/x"]
    assert d.list("/") == ["/docker"]
    v2 = "/docker/registry/v2"
    assert [i.path for i in d.walk("/")] == ["/docker", "/docker/registry", v2, f"{v2}/x"]
    d.delete("/")
    assert s3.client.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("ServiceUnavailable", 503), ("InternalError", 500), ("ThrottlingException", 400)],
)
def test_throttling_and_server_errors_are_unavailable(s3: S3Driver, code: str, status: int) -> None:
    with Stubber(s3.client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        with pytest.raises(StorageUnavailable):
            CheckedDriver(s3).get_content("/f")


def test_permanent_errors_are_not_retryable(s3: S3Driver) -> None:
    with Stubber(s3.client) as stub:
        stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StorageError) as info:
            CheckedDriver(s3).put_content("/f", b"x")
    assert not isinstance(info.value, (StorageUnavailable, PathNotFound))
    assert "AccessDenied" in str(info.value)


def test_unreachable_endpoint_is_unavailable() -> None:
    dead = S3Driver(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        force_path_style=True,
        secure=False,
        max_attempts=1,
        connect_timeout=2.0,
        access_key=KEY,
        secret_key=SECRET,
    )
    with pytest.raises(StorageUnavailable):
        CheckedDriver(dead).get_content("/f")


def test_factory_builds_s3_from_settings(endpoint: str) -> None:
    bucket = f"lading-{uuid.uuid4().hex[:16]}"
    settings = StorageSettings(
        driver="s3",
        s3_bucket=bucket,
        s3_regionendpoint=endpoint,
        s3_accesskey="testing",
        s3_secretkey="testing",
        s3_forcepathstyle=True,
        s3_secure=False,
        s3_rootdirectory="/prefix",
    )
    d = driver_from_settings(settings)
    assert isinstance(d, CheckedDriver) and isinstance(d.inner, S3Driver)
    d.inner.client.create_bucket(Bucket=bucket)
    d.put_content("/a", b"1")
    assert d.get_content("/a") == b"1"
    assert d.inner.client.head_object(Bucket=bucket, Key="prefix/a")["ContentLength"] == 1
