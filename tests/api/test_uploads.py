"""Blob uploads: end-4a/4b/4c (POST), end-5 (PATCH), end-6 (PUT), end-13 (GET), end-14 (DELETE),
end-11 (mount). Bad input is rejected and loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from api import streaming
from api.routes import uploads as upload_routes
from pipeline import jobs as joblib
from pipeline.errors import DigestInvalid, StorageUnavailable
from pipeline.formats.digest import Digest
from pipeline.storage import paths
from tests.api.helpers import OCTET, GatedJobs, RecordingJobs, errors_of, push_blob, sha
from tests.support.inline_jobs import InlineJobClient

pytestmark = pytest.mark.anyio

DATA = b"0123456789abcdefghij" * 50  # 1000 bytes


async def start(api: Any, name: str = "repo", **params: str) -> str:
    r = await api.client.post(f"/v2/{name}/blobs/uploads/", params=params)
    assert r.status_code == 202, r.text
    return str(r.headers["location"])


def session_size(api: Any, location: str, name: str = "repo") -> int:
    upload_id = location.split("?")[0].rsplit("/", 1)[1]
    return int(api.registry.uploads.status(name, upload_id).size)


def nothing_committed(api: Any, data: bytes, name: str = "repo") -> None:
    digest = Digest.parse(sha(data))
    assert not api.registry.blobs.exists(digest)
    assert not api.registry.repo_blobs.is_linked(name, digest)


# --- POST --------------------------------------------------------------------------------


async def test_post_starts_a_session(api: Any) -> None:
    r = await api.client.post("/v2/repo/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202
    upload_id = r.headers["docker-upload-uuid"]
    assert r.headers["location"] == f"/v2/repo/blobs/uploads/{upload_id}"
    assert r.headers["range"] == "0-0"
    assert r.headers["content-length"] == "0"
    assert api.registry.uploads.status("repo", upload_id).size == 0


async def test_post_without_trailing_slash(api: Any) -> None:
    r = await api.client.post("/v2/repo/blobs/uploads")
    assert r.status_code == 202


async def test_monolithic_post_with_digest_commits(api: Any) -> None:
    digest = sha(DATA)
    url = "/v2/repo/blobs/uploads/"
    r = await api.client.post(url, params={"digest": digest}, content=DATA, headers=OCTET)
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/repo/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert (await api.client.get(f"/v2/repo/blobs/{digest}")).content == DATA
    assert list(api.registry.uploads.sessions("repo")) == []


async def test_monolithic_post_digest_mismatch_leaves_nothing(api: Any) -> None:
    wrong = sha(b"something else")
    url = "/v2/repo/blobs/uploads/"
    r = await api.client.post(url, params={"digest": wrong}, content=DATA, headers=OCTET)
    errors_of(r, 400, "DIGEST_INVALID")
    nothing_committed(api, DATA)
    assert not api.registry.blobs.exists(Digest.parse(wrong))
    assert list(api.registry.uploads.sessions("repo")) == []


async def test_monolithic_post_malformed_digest_creates_nothing(api: Any) -> None:
    r = await api.client.post("/v2/repo/blobs/uploads/", params={"digest": "sha256:zz"}, content=DATA)
    errors_of(r, 400, "DIGEST_INVALID")
    assert list(api.registry.uploads.sessions("repo")) == []


async def test_digest_algorithm_sha512_is_kept_in_location(api: Any) -> None:
    location = await start(api, **{"digest-algorithm": "sha512"})
    assert location.endswith("?digest-algorithm=sha512")
    r = await api.client.patch(location, content=DATA, headers={"Content-Range": f"0-{len(DATA) - 1}"})
    assert r.status_code == 202
    assert r.headers["location"] == location
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    r = await api.client.put(r.headers["location"] + f"&digest={digest}")
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert (await api.client.get(f"/v2/repo/blobs/{digest}")).content == DATA


async def test_unsupported_digest_algorithm_is_400(api: Any) -> None:
    r = await api.client.post("/v2/repo/blobs/uploads/", params={"digest-algorithm": "md5"})
    errors_of(r, 400, "DIGEST_INVALID")


# --- PATCH / GET / PUT -------------------------------------------------------------------


async def test_chunked_upload_with_content_range(api: Any) -> None:
    location = await start(api)
    r = await api.client.patch(location, content=DATA[:400], headers={"Content-Range": "0-399", **OCTET})
    assert r.status_code == 202
    assert r.headers["range"] == "0-399"
    assert r.headers["content-length"] == "0"
    upload_id = r.headers["docker-upload-uuid"]
    assert r.headers["location"].endswith(upload_id)
    r = await api.client.get(r.headers["location"])
    assert r.status_code == 204
    assert r.headers["range"] == "0-399"
    assert r.headers["docker-upload-uuid"] == upload_id
    r = await api.client.patch(
        r.headers["location"], content=DATA[400:], headers={"Content-Range": "400-999"}
    )
    assert r.status_code == 202
    assert r.headers["range"] == "0-999"
    r = await api.client.put(r.headers["location"], params={"digest": sha(DATA)})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/repo/blobs/{sha(DATA)}"
    assert (await api.client.get(f"/v2/repo/blobs/{sha(DATA)}")).content == DATA
    errors_of(await api.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_streamed_patch_without_content_range(api: Any) -> None:
    location = await start(api)

    async def body() -> Any:
        for i in range(0, len(DATA), 7):
            yield DATA[i : i + 7]

    r = await api.client.patch(location, content=body())
    assert r.status_code == 202
    assert r.headers["range"] == f"0-{len(DATA) - 1}"
    r = await api.client.patch(location, content=b"tail")
    assert r.headers["range"] == f"0-{len(DATA) + 3}"
    r = await api.client.put(location, params={"digest": sha(DATA + b"tail")})
    assert r.status_code == 201


async def test_put_with_final_chunk(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA[:10], headers={"Content-Range": "0-9"})
    r = await api.client.put(
        location, params={"digest": sha(DATA)}, content=DATA[10:], headers={"Content-Range": "10-999"}
    )
    assert r.status_code == 201, r.text
    assert (await api.client.get(f"/v2/repo/blobs/{sha(DATA)}")).content == DATA


async def test_post_then_single_put(api: Any) -> None:
    location = await start(api)
    r = await api.client.put(location, params={"digest": sha(DATA)}, content=DATA, headers=OCTET)
    assert r.status_code == 201


async def test_out_of_order_chunk_is_416_and_stored_bytes_unchanged(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    for bad_range, chunk in (("200-299", DATA[200:300]), ("0-99", DATA[:100]), ("50-149", DATA[50:150])):
        r = await api.client.patch(location, content=chunk, headers={"Content-Range": bad_range})
        assert r.status_code == 416, r.text
        assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        assert r.headers["range"] == "0-99"
        assert r.headers["location"] == location
        assert session_size(api, location) == 100
    # The session still completes with the right bytes.
    await api.client.patch(location, content=DATA[100:], headers={"Content-Range": "100-999"})
    r = await api.client.put(location, params={"digest": sha(DATA)})
    assert r.status_code == 201
    assert (await api.client.get(f"/v2/repo/blobs/{sha(DATA)}")).content == DATA


async def test_out_of_order_final_chunk_on_put_is_416(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    r = await api.client.put(
        location, params={"digest": sha(DATA)}, content=DATA[500:], headers={"Content-Range": "500-999"}
    )
    assert r.status_code == 416
    assert session_size(api, location) == 100
    nothing_committed(api, DATA)


async def test_chunk_length_differing_from_content_range_is_400_size_invalid(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    r = await api.client.patch(location, content=DATA[100:150], headers={"Content-Range": "100-199"})
    errors_of(r, 400, "SIZE_INVALID")
    assert session_size(api, location) == 100


async def test_malformed_content_range_is_400(api: Any) -> None:
    location = await start(api)
    r = await api.client.patch(location, content=b"abc", headers={"Content-Range": "bytes abc"})
    errors_of(r, 400, "BLOB_UPLOAD_INVALID")
    r = await api.client.patch(location, content=b"abc", headers={"Content-Range": "5-2"})
    assert r.status_code == 416
    assert session_size(api, location) == 0


async def test_digest_mismatch_on_put_keeps_session_and_commits_nothing(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA)
    wrong = sha(b"not the data")
    errors_of(await api.client.put(location, params={"digest": wrong}), 400, "DIGEST_INVALID")
    nothing_committed(api, DATA)
    assert not api.registry.blobs.exists(Digest.parse(wrong))
    assert not api.registry.repo_blobs.is_linked("repo", Digest.parse(wrong))
    # The session is intact: the client may retry with the right digest.
    r = await api.client.get(location)
    assert r.status_code == 204
    assert r.headers["range"] == f"0-{len(DATA) - 1}"
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201


async def test_failed_put_with_body_cancels_the_session_as_distribution_does(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA[:100])
    wrong = sha(b"not the data")
    r = await api.client.put(location, params={"digest": wrong}, content=DATA[100:], headers=OCTET)
    errors_of(r, 400, "DIGEST_INVALID")
    nothing_committed(api, DATA)
    # The failed PUT's body is not left behind to poison a retry: the session is gone and
    # the client restarts the upload cleanly.
    errors_of(await api.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    r = await api.client.put(location, params={"digest": sha(DATA)}, content=DATA[100:], headers=OCTET)
    errors_of(r, 404, "BLOB_UPLOAD_UNKNOWN")
    nothing_committed(api, DATA)
    assert list(api.registry.uploads.sessions("repo")) == []
    location = await start(api)
    r = await api.client.put(location, params={"digest": sha(DATA)}, content=DATA, headers=OCTET)
    assert r.status_code == 201


async def test_put_body_differing_from_its_content_range_is_not_kept(api: Any) -> None:
    location = await start(api)
    headers = {**OCTET, "Content-Range": "0-9"}
    r = await api.client.put(location, params={"digest": sha(DATA[:5])}, content=DATA[:5], headers=headers)
    errors_of(r, 400, "SIZE_INVALID")
    assert session_size(api, location) == 0


@pytest.mark.parametrize("bad", ["sha256:1234", "nonsense", "sha1:" + "a" * 40, ""])
async def test_malformed_or_missing_digest_on_put_is_400_and_session_survives(api: Any, bad: str) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA)
    params = {"digest": bad} if bad else {}
    errors_of(await api.client.put(location, params=params), 400, "DIGEST_INVALID")
    assert session_size(api, location) == len(DATA)
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201


async def test_unknown_upload_is_404_for_every_method(api: Any) -> None:
    missing = "/v2/repo/blobs/uploads/6f1c7f1e-7a9e-4bb9-9a07-4a2ae2f3f2b1"
    for method in ("GET", "HEAD", "PATCH", "PUT", "DELETE"):
        params = {"digest": sha(DATA)} if method == "PUT" else None
        content = b"x" if method == "PATCH" else None
        r = await api.client.request(method, missing, params=params, content=content)
        assert r.status_code == 404, (method, r.text)
        if method != "HEAD":
            errors_of(r, 404, "BLOB_UPLOAD_UNKNOWN")
    errors_of(await api.client.get("/v2/repo/blobs/uploads/not-a-uuid"), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_put_with_body_to_a_gone_session_is_404_and_stores_nothing(api: Any) -> None:
    location = await start(api)
    assert (await api.client.delete(location)).status_code == 204
    r = await api.client.put(location, params={"digest": sha(DATA)}, content=DATA, headers=OCTET)
    errors_of(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert (await api.client.head(f"/v2/repo/blobs/{sha(DATA)}")).status_code == 404


async def test_put_with_body_and_malformed_digest_appends_nothing(api: Any) -> None:
    location = await start(api)
    r = await api.client.put(location, params={"digest": "sha256:nope"}, content=DATA, headers=OCTET)
    errors_of(r, 400, "DIGEST_INVALID")
    assert session_size(api, location) == 0


async def test_upload_of_another_repository_is_unknown(api: Any) -> None:
    location = await start(api, name="one")
    errors_of(await api.client.get(location.replace("/v2/one/", "/v2/two/")), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_delete_upload_cancels_it(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA)
    r = await api.client.delete(location)
    assert r.status_code == 204
    errors_of(await api.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    errors_of(await api.client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert list(api.registry.uploads.sessions("repo")) == []


@pytest.mark.parametrize(
    "framing",
    [[(b"content-length", b"900")], [(b"transfer-encoding", b"chunked")]],
    ids=["small-body-read-whole", "streamed-body"],
)
async def test_client_disconnect_mid_chunk_leaves_nothing_of_it(
    api: Any, framing: list[Any], monkeypatch: Any
) -> None:
    # Small buffers, so part of the chunk has reached the writer when the client goes away.
    monkeypatch.setattr(streaming, "BUFFER_SIZE", 128)
    location = await start(api)
    await api.client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": DATA[100:400], "more_body": True},
        {"type": "http.request", "body": DATA[400:600], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)  # like a network: the writer gets to write what came so far
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": location,
        "raw_path": location.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"registry.test"), (b"content-range", b"100-999"), *framing],
        "client": ("127.0.0.1", 1),
        "server": ("registry.test", 80),
    }
    await api.app(scope, receive, send)
    assert sent[0]["status"] == 400  # handled as a disconnect, not a server error
    assert session_size(api, location) == 100
    # The client reconnects, asks where to resume, and finishes.
    r = await api.client.get(location)
    assert r.headers["range"] == "0-99"
    await api.client.patch(location, content=DATA[100:], headers={"Content-Range": "100-999"})
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201


async def test_advance_digest_sent_when_a_chunk_crosses_the_boundary(make_api: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(upload_routes, "ADVANCE_EVERY", 256)
    api = await make_api()
    jobs = RecordingJobs(InlineJobClient(api.registry))
    api = await make_api(registry=api.registry, jobs=jobs)
    location = await start(api)
    await api.client.patch(location, content=DATA[:200])  # 0 -> 200: no boundary
    assert joblib.ADVANCE_DIGEST not in jobs.names()
    await api.client.patch(location, content=DATA[200:300])  # 200 -> 300 crosses 256
    assert jobs.names().count(joblib.ADVANCE_DIGEST) == 1
    _, kwargs = jobs.sent[-1]
    assert kwargs["repository"] == "repo" and kwargs["algorithm"] == "sha256"
    await api.client.patch(location, content=DATA[300:])  # 300 -> 1000 crosses 512 and 768
    assert jobs.names().count(joblib.ADVANCE_DIGEST) == 2
    r = await api.client.put(location, params={"digest": sha(DATA)})
    assert r.status_code == 201
    jobs.inner.close()


async def test_commit_sends_size_and_digest_to_the_job(make_api: Any) -> None:
    first = await make_api()
    jobs = RecordingJobs(InlineJobClient(first.registry))
    api = await make_api(registry=first.registry, jobs=jobs)
    location = await start(api)
    await api.client.patch(location, content=DATA)
    await api.client.put(location, params={"digest": sha(DATA)})
    name, kwargs = jobs.sent[-1]
    assert name == joblib.COMMIT_BLOB
    assert kwargs["digest"] == sha(DATA) and kwargs["size"] == len(DATA) and kwargs["repository"] == "repo"
    jobs.inner.close()


# --- mount -------------------------------------------------------------------------------


async def test_mount_from_a_repository_holding_the_blob(api: Any) -> None:
    digest = await push_blob(api.client, "source", DATA)
    r = await api.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/target/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert (await api.client.get(f"/v2/target/blobs/{digest}")).content == DATA
    assert list(api.registry.uploads.sessions("target")) == []


@pytest.mark.parametrize(
    "params",
    [
        {"mount": sha(b"absent"), "from": "source"},  # blob not there
        {"mount": "__DIGEST__"},  # no `from`: no automatic discovery
        {"mount": "__DIGEST__", "from": "Bad Name"},
        {"mount": "sha256:nope", "from": "source"},
        {"mount": "__DIGEST__", "from": "elsewhere"},  # repository without the blob
    ],
)
async def test_mount_falls_back_to_a_session(api: Any, params: dict[str, str]) -> None:
    digest = await push_blob(api.client, "source", DATA)
    params = {k: (digest if v == "__DIGEST__" else v) for k, v in params.items()}
    r = await api.client.post("/v2/target/blobs/uploads/", params=params)
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/v2/target/blobs/uploads/")
    assert not api.registry.repo_blobs.is_linked("target", Digest.parse(digest))


async def test_pending_commit_paths_live_under_the_repository() -> None:
    path = paths.pending_commit("a/b", Digest.parse(sha(b"x")))
    assert path.startswith(paths.repository("a/b") + "/_lading/")


async def test_put_retried_after_the_commit_finished_is_201(api: Any) -> None:
    location = await start(api)
    await api.client.patch(location, content=DATA)
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201
    # As if the first answer was lost (e.g. a 503 JobTimeout while the job completed).
    r = await api.client.put(location, params={"digest": sha(DATA)})
    assert r.status_code == 201
    assert r.headers["docker-content-digest"] == sha(DATA)
    # But only for the digest that is really there.
    errors_of(await api.client.put(location, params={"digest": sha(b"other")}), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("upload_id", ["no-such-upload", "%00", "a.b", "-", "a" * 5000])
async def test_put_to_a_never_issued_id_is_404_even_for_a_linked_digest(api: Any, upload_id: str) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.put(f"/v2/repo/blobs/uploads/{upload_id}", params={"digest": digest})
    errors_of(r, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_put_retry_after_the_commit_finished_emits_no_second_push(api: Any, monkeypatch: Any) -> None:
    from api.routes.context import RequestContext

    pushes: list[str] = []
    original = RequestContext.notify_blob

    async def recording(self: Any, action: Any, digest: str, *args: Any, **kwargs: Any) -> None:
        pushes.append(f"{action} {digest}")
        await original(self, action, digest, *args, **kwargs)

    monkeypatch.setattr(RequestContext, "notify_blob", recording)
    location = await start(api)
    await api.client.patch(location, content=DATA)
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201
    assert (await api.client.put(location, params={"digest": sha(DATA)})).status_code == 201
    assert pushes == [f"push {sha(DATA)}"]


class ShortWaitJobs(GatedJobs):
    """GatedJobs whose commits time out (503) quickly while the gate is closed, as when the
    workers are busy or paused past celery.commit_timeout."""

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        return await self.wait(self.send(job, **kwargs), timeout if self.gate.is_set() else 0.2)


async def _short_wait_api(make_api: Any) -> tuple[Any, ShortWaitJobs]:
    first = await make_api()
    jobs = ShortWaitJobs(first.registry)
    return await make_api(registry=first.registry, jobs=jobs), jobs


async def _until_linked(api: Any, digest: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not api.registry.repo_blobs.is_linked("repo", Digest.parse(digest)):
        assert loop.time() < deadline, "the commit never finished"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("body", [DATA, os.urandom(upload_routes.SMALL_BODY + 1000)])
async def test_put_with_body_retried_after_a_timeout_appends_once_and_succeeds(
    make_api: Any, body: bytes
) -> None:
    api, jobs = await _short_wait_api(make_api)
    try:
        location = await start(api)
        put = {"params": {"digest": sha(body)}, "content": body, "headers": OCTET}
        errors_of(await api.client.put(location, **put), 503, "UNAVAILABLE")
        errors_of(await api.client.put(location, **put), 503, "UNAVAILABLE")
        assert session_size(api, location) == len(body)  # the retry did not append again
        jobs.gate.set()  # the workers catch up
        r = await api.client.put(location, **put)
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == sha(body)
        assert (await api.client.get(f"/v2/repo/blobs/{sha(body)}")).content == body
    finally:
        jobs.close()


async def test_put_with_body_retried_after_its_commit_finished_is_201(make_api: Any) -> None:
    api, jobs = await _short_wait_api(make_api)
    try:
        location = await start(api)
        put = {"params": {"digest": sha(DATA)}, "content": DATA, "headers": OCTET}
        errors_of(await api.client.put(location, **put), 503, "UNAVAILABLE")
        jobs.gate.set()
        await _until_linked(api, sha(DATA))
        r = await api.client.put(location, **put)
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v2/repo/blobs/{sha(DATA)}"
        assert (await api.client.get(f"/v2/repo/blobs/{sha(DATA)}")).content == DATA
        # Only for the digest that is really there.
        other = {**put, "params": {"digest": sha(b"other")}}
        errors_of(await api.client.put(location, **other), 404, "BLOB_UPLOAD_UNKNOWN")
    finally:
        jobs.close()


async def test_put_with_another_body_after_a_timeout_is_a_new_chunk(make_api: Any) -> None:
    # Only the same PUT (digest, body length) is a retry: another body is appended as always.
    api, jobs = await _short_wait_api(make_api)
    try:
        location = await start(api)
        first = {"params": {"digest": sha(DATA)}, "content": DATA[:300], "headers": OCTET}
        errors_of(await api.client.put(location, **first), 503, "UNAVAILABLE")
        jobs.gate.set()
        with pytest.raises(DigestInvalid):  # 300 bytes are not DATA
            await jobs.wait(jobs.waited[0], 10)
        second = {"params": {"digest": sha(DATA)}, "content": DATA[300:], "headers": OCTET}
        r = await api.client.put(location, **second)
        assert r.status_code == 201, r.text
        assert (await api.client.get(f"/v2/repo/blobs/{sha(DATA)}")).content == DATA
    finally:
        jobs.close()


async def test_storage_failure_while_streaming_a_chunk_is_503_and_keeps_old_bytes(
    api: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(streaming, "BUFFER_SIZE", 64 * 1024)
    location = await start(api)
    await api.client.patch(location, content=DATA[:100])
    real_open = api.registry.uploads.open_append

    def flaky_open(repo: str, upload_id: str, offset: int | None) -> Any:
        writer = real_open(repo, upload_id, offset)
        calls = {"n": 0}
        real_write = writer.write

        def write(data: bytes) -> int:
            calls["n"] += 1
            if calls["n"] == 2:
                raise StorageUnavailable("disk went away")
            return int(real_write(data))

        writer.write = write
        return writer

    monkeypatch.setattr(api.registry.uploads, "open_append", flaky_open)

    async def big() -> Any:  # streamed (no Content-Length), several buffers
        for _ in range(8):
            yield b"z" * (64 * 1024)

    r = await api.client.patch(location, content=big())
    errors_of(r, 503, "UNAVAILABLE")
    monkeypatch.setattr(api.registry.uploads, "open_append", real_open)
    assert session_size(api, location) == 100


def _saved_state_offsets(api: Any, upload_id: str) -> list[int]:
    try:
        names = api.registry.driver.list(paths.upload_hashstates_dir("repo", upload_id, "sha256"))
    except Exception:
        return []
    return sorted(int(n.rsplit("/", 1)[-1]) for n in names)


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_hash_states_are_saved_while_a_long_body_streams(
    make_api: Any, monkeypatch: Any, method: str
) -> None:
    """Workers hash while the bytes arrive: a 6 MiB body streamed in one PATCH (or one
    monolithic PUT) with a 1 MiB advance interval has hash states saved at boundaries
    before its last bytes are even sent, and the commit still gives the right digest."""
    mib = 1024 * 1024
    monkeypatch.setattr(upload_routes, "ADVANCE_EVERY", mib)
    api = await make_api()
    jobs = RecordingJobs(InlineJobClient(api.registry))
    api = await make_api(registry=api.registry, jobs=jobs)
    data = bytes(range(256)) * (6 * mib // 256)
    location = await start(api)
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    seen_mid_body: list[int] = []

    async def body() -> Any:
        piece = 256 * 1024
        for offset in range(0, len(data), piece):
            if offset == len(data) - piece:
                # Before the last piece is sent: a worker has already saved a state at a
                # boundary at least 4 MiB in (waits on the condition, with a deadline).
                for _ in range(400):
                    seen_mid_body[:] = _saved_state_offsets(api, upload_id)
                    if seen_mid_body and max(seen_mid_body) >= 4 * mib:
                        break
                    await asyncio.sleep(0.025)
            yield data[offset : offset + piece]

    if method == "PATCH":
        r = await api.client.patch(location, content=body())
        assert r.status_code == 202
        r = await api.client.put(location, params={"digest": sha(data)})
    else:
        r = await api.client.put(location, params={"digest": sha(data)}, content=body())
    assert r.status_code == 201, r.text
    assert seen_mid_body and max(seen_mid_body) >= 4 * mib, seen_mid_body
    assert all(offset % mib == 0 or offset > 4 * mib for offset in seen_mid_body)
    assert jobs.names().count(joblib.ADVANCE_DIGEST) >= 5  # one per boundary crossed
    assert api.registry.repo_blobs.stat("repo", Digest.parse(sha(data))) == len(data)
    jobs.inner.close()


async def test_no_advance_digest_for_a_boundary_at_the_end_of_the_body(
    make_api: Any, monkeypatch: Any
) -> None:
    """A 64 MiB monolithic PUT ends on a boundary: the commit follows at once, so a job
    there would only hash the same bytes twice. A boundary well before the end still sends."""
    mib = 1024 * 1024
    monkeypatch.setattr(upload_routes, "ADVANCE_EVERY", mib)
    api = await make_api()
    jobs = RecordingJobs(InlineJobClient(api.registry))
    api = await make_api(registry=api.registry, jobs=jobs)
    for size, advances in ((mib, 0), (4 * mib, 3)):  # 4 MiB: at 1, 2 and 3 MiB, not at 4
        data = os.urandom(size)

        async def pieces(data: bytes = data) -> Any:
            for offset in range(0, len(data), 256 * 1024):
                yield data[offset : offset + 256 * 1024]

        r = await api.client.post(
            "/v2/repo/blobs/uploads/",
            params={"digest": sha(data)},
            content=pieces(),
            headers={"Content-Length": str(size)},
        )
        assert r.status_code == 201, r.text
        assert jobs.names().count(joblib.ADVANCE_DIGEST) == advances
    jobs.inner.close()
