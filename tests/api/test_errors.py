"""api.errors: the one map from domain errors to OCI codes/statuses, and how failures that are
nobody's fault (storage down, limits, slow jobs, bugs) reach the client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.errors import code_and_status, error_entries, error_response
from pipeline import errors as domain
from tests.api.helpers import errors_of, sha

pytestmark = pytest.mark.anyio

SPEC_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}


def _registry_errors() -> list[type[domain.LadingError]]:
    found: list[type[domain.LadingError]] = []
    todo: list[type[domain.LadingError]] = [domain.RegistryError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_registry_error_has_a_4xx_or_5xx_mapping() -> None:
    for cls in _registry_errors():
        if cls is domain.RegistryError:
            continue
        code, status = code_and_status(domain.from_payload({"kind": cls.__name__, "detail": None}))
        assert code != "UNKNOWN", f"{cls.__name__} has no OCI code (itself or by an ancestor)"
        assert 400 <= status < 600
        if status < 500:
            # 4xx codes come from the spec's list (TAG_INVALID: distribution's, accepted by conformance)
            assert code in SPEC_CODES | {"TAG_INVALID"}, code


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (domain.NameInvalid("x"), "NAME_INVALID", 400),
        (domain.NameUnknown("x"), "NAME_UNKNOWN", 404),
        (domain.DigestInvalid("x"), "DIGEST_INVALID", 400),
        (domain.SizeInvalid("x"), "SIZE_INVALID", 400),
        (domain.BlobUnknown("x"), "BLOB_UNKNOWN", 404),
        (domain.BlobUploadUnknown("x"), "BLOB_UPLOAD_UNKNOWN", 404),
        (domain.RangeInvalid("x"), "BLOB_UPLOAD_INVALID", 416),
        (domain.ManifestUnknown("x"), "MANIFEST_UNKNOWN", 404),
        (domain.ManifestInvalid("x"), "MANIFEST_INVALID", 400),
        (domain.LayerInvalid("x"), "MANIFEST_INVALID", 400),
        (domain.BlobCorrupt("x"), "BLOB_UNKNOWN", 404),
        (domain.OperationUnsupported("x"), "UNSUPPORTED", 405),
        (domain.Unauthorized("x"), "UNAUTHORIZED", 401),
        (domain.Denied("x"), "DENIED", 403),
        (domain.TooManyRequests("x"), "TOOMANYREQUESTS", 429),
        (domain.StorageUnavailable("x"), "UNAVAILABLE", 503),
        (domain.JobTimeout("x"), "UNAVAILABLE", 503),
        (domain.PathNotFound("/x"), "UNKNOWN", 500),
        (domain.LadingError("x"), "UNKNOWN", 500),
    ],
)
def test_mapping(error: domain.LadingError, code: str, status: int) -> None:
    assert code_and_status(error) == (code, status)
    response = error_response(error)
    assert response.status_code == status
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.headers["content-type"] == "application/json"
    body = json.loads(bytes(response.body))
    assert body["errors"][0]["code"] == code
    assert set(body["errors"][0]) == {"code", "message", "detail"}


def test_errors_rebuilt_from_a_job_payload_map_the_same() -> None:
    for error in (domain.DigestInvalid("d"), domain.ManifestBlobUnknown(["sha256:" + "a" * 64])):
        rebuilt = domain.from_payload(error.to_payload())
        assert code_and_status(rebuilt) == code_and_status(error)
        assert error_entries(rebuilt) == error_entries(error)


def test_manifest_blob_unknown_has_one_entry_per_digest() -> None:
    digests = [sha(b"1"), sha(b"2"), sha(b"3")]
    entries = error_entries(domain.ManifestBlobUnknown(digests))
    assert [e["detail"] for e in entries] == [{"digest": d} for d in digests]
    assert {e["code"] for e in entries} == {"MANIFEST_BLOB_UNKNOWN"}


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (domain.StorageUnavailable("slow down"), "5"),
        (domain.JobTimeout("slow"), "5"),
        (domain.TooManyRequests("busy"), "1"),
        (domain.TooManyRequests({"retry_after": 7}), "7"),
    ],
)
def test_transient_errors_say_when_to_retry(error: domain.LadingError, retry_after: str) -> None:
    assert error_response(error).headers["retry-after"] == retry_after


def test_unexpected_exception_is_500_unknown_without_details() -> None:
    response = error_response(RuntimeError("secret internals at /etc/x"))
    assert response.status_code == 500
    assert b"secret" not in bytes(response.body)
    assert json.loads(bytes(response.body))["errors"][0]["code"] == "UNKNOWN"


def test_unauthorized_carries_its_challenge() -> None:
    error = domain.Unauthorized("x")
    error.challenge = 'Bearer realm="https://auth",service="reg"'
    assert error_response(error).headers["www-authenticate"] == 'Bearer realm="https://auth",service="reg"'


class RaisingJobs:
    """A JobClient whose jobs all fail with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def send(self, job: str, **kwargs: Any) -> str:
        raise self.error

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        raise self.error

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (domain.StorageUnavailable("broker down"), 503, "UNAVAILABLE"),
        (domain.JobTimeout("still running"), 503, "UNAVAILABLE"),
        (domain.TooManyRequests("repository lock busy"), 429, "TOOMANYREQUESTS"),
    ],
)
async def test_job_failures_reach_the_client_as_retryable_errors(
    make_api: Any, error: Exception, status: int, code: str
) -> None:
    api = await make_api(jobs=RaisingJobs(error))
    r = await api.client.post("/v2/repo/blobs/uploads/")
    location = r.headers["location"]
    r = await api.client.put(location, params={"digest": sha(b"abc")}, content=b"abc")
    errors_of(r, status, code)
    assert "retry-after" in r.headers
    # The bytes are kept: the session is still there for a retry.
    assert (await api.client.get(location)).headers["range"] == "0-2"


async def test_storage_unavailable_while_reading_is_503(make_api: Any) -> None:
    api = await make_api()

    def broken(*args: Any) -> int:
        raise domain.StorageUnavailable("throttled")

    api.registry.repo_blobs.stat = broken
    r = await api.client.get(f"/v2/repo/blobs/{sha(b'x')}")
    errors_of(r, 503, "UNAVAILABLE")
    assert r.headers["retry-after"] == "5"


async def test_a_bug_in_a_handler_is_a_500_with_the_version_header(make_api: Any) -> None:
    api = await make_api()

    def bug(*args: Any) -> None:
        raise ZeroDivisionError("oops")

    api.registry.tags.list = bug
    r = await api.client.get("/v2/repo/tags/list")
    errors_of(r, 500, "UNKNOWN")
    assert "oops" not in r.text
