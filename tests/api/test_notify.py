"""Notifications from the API (api.notify): which requests become which events, what a
receiver learns from each, per-endpoint filters, and that a registry without endpoints —
or with a broker that refuses the jobs — behaves exactly as before for its clients."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from api.app import create_app
from api.auth import Access
from api.notify import Notifier
from pipeline import events, jobs
from pipeline.config import NotificationEndpoint, Settings, StorageSettings
from pipeline.errors import StorageUnavailable
from pipeline.registry import Registry
from tests.api.auth.conftest import basic, htpasswd_settings, write_htpasswd
from tests.api.helpers import OCI_MANIFEST, oci_manifest, push_blob, push_image, push_manifest, sha
from tests.support.inline_jobs import InlineJobClient

pytestmark = pytest.mark.anyio

BLOB = "application/octet-stream"
HOOK = NotificationEndpoint("hook", "http://127.0.0.1:1/events")


class NotifyRecorder:
    """A JobClient that records every NOTIFY_EVENT job (never running it) and runs every
    other job inline, so pushes really commit. `fail_notify` makes NOTIFY_EVENT sends raise
    like a CeleryJobClient whose broker is unreachable."""

    def __init__(self, registry: Registry) -> None:
        self.inner = InlineJobClient(registry)
        self.sent: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.fail_notify = False

    def send(self, job: str, **kwargs: Any) -> str:
        if job == jobs.NOTIFY_EVENT:
            self.threads.add(threading.current_thread().name)
            if self.fail_notify:
                raise StorageUnavailable("job broker unreachable: connection refused")
            self.sent.append(kwargs)
            return f"notify-{len(self.sent)}"
        return self.inner.send(job, **kwargs)

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        return await self.inner.wait(job_id, timeout)

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        return await self.wait(self.send(job, **kwargs), timeout)


@dataclasses.dataclass
class Hooked:
    client: httpx.AsyncClient
    app: Any
    jobs: NotifyRecorder

    def events(self, endpoint: str = "hook") -> list[dict[str, Any]]:
        """Every event sent to `endpoint` so far, once the sender thread handed them over."""
        assert self.app.state.notifier.flush(10)
        out = []
        for kwargs in self.jobs.sent:
            if kwargs["endpoint"] == endpoint:
                assert set(kwargs) == {"endpoint", "envelope"}
                out.extend(kwargs["envelope"]["events"])
        return out

    def clear(self) -> None:
        assert self.app.state.notifier.flush(10)
        self.jobs.sent.clear()


@pytest.fixture
async def make_hooked() -> AsyncIterator[Callable[..., Any]]:
    made: list[Hooked] = []

    async def factory(
        *endpoints: NotificationEndpoint, settings: Settings | None = None, **http: Any
    ) -> Hooked:
        base = settings or Settings()
        settings = dataclasses.replace(
            base,
            storage=StorageSettings(driver="inmemory", delete_enabled=True, redirect_disabled=True),
            http=dataclasses.replace(base.http, **http),
            notifications=endpoints,
        )
        registry = Registry.in_memory(settings)
        recorder = NotifyRecorder(registry)
        app = create_app(settings, registry, recorder, Access.from_settings(settings))
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://registry.test")
        hooked = Hooked(client, app, recorder)
        made.append(hooked)
        return hooked

    yield factory
    for hooked in made:
        await hooked.client.aclose()
        hooked.app.state.notifier.close(5)
        hooked.jobs.inner.close()


@pytest.fixture
async def hooked(make_hooked: Callable[..., Any]) -> Hooked:
    return await make_hooked(HOOK)


def targets(events_: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e["target"] for e in events_ if e["action"] == action]


async def test_push_of_blobs_and_a_tagged_manifest(hooked: Hooked) -> None:
    layer = b"layer bytes" * 100
    manifest_digest, body = await push_image(hooked.client, "team/app", "v1", [layer], config=b'{"c":1}')
    pushes = targets(hooked.events(), "push")
    assert [t["digest"] for t in pushes] == [sha(b'{"c":1}'), sha(layer), manifest_digest]
    blob = pushes[1]
    assert blob == {
        "mediaType": BLOB,
        "digest": sha(layer),
        "size": len(layer),
        "length": len(layer),
        "repository": "team/app",
        "url": f"http://registry.test/v2/team/app/blobs/{sha(layer)}",
    }
    assert pushes[2] == {
        "mediaType": OCI_MANIFEST,
        "digest": manifest_digest,
        "size": len(body),
        "length": len(body),
        "repository": "team/app",
        "url": f"http://registry.test/v2/team/app/manifests/{manifest_digest}",
        "tag": "v1",
    }
    event = hooked.events()[2]
    assert event["request"]["method"] == "PUT" and event["request"]["host"] == "registry.test"
    assert event["request"]["addr"] == "10.1.2.3:40000"
    assert event["request"]["useragent"].startswith("python-httpx/")
    assert event["actor"] == {} and event["source"]["instanceID"] == events.INSTANCE_ID
    assert len({e["id"] for e in hooked.events()}) == 3


async def test_chunked_push_reports_on_the_completing_put_only(hooked: Hooked) -> None:
    data = b"x" * 5000
    started = await hooked.client.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    patched = await hooked.client.patch(location, content=data[:3000])
    assert not hooked.events()
    url = patched.headers["location"]
    done = await hooked.client.put(url, params={"digest": sha(data)}, content=data[3000:])
    assert done.status_code == 201
    (target,) = targets(hooked.events(), "push")
    assert target["digest"] == sha(data) and target["size"] == 5000


async def test_push_by_digest_with_tags_reports_each_tag(hooked: Hooked) -> None:
    config = await push_blob(hooked.client, "app", b"{}")
    assert config
    body = oci_manifest(b"{}", [])
    digest = sha(body)
    hooked.clear()
    r = await hooked.client.put(
        f"/v2/app/manifests/{digest}",
        params=[("tag", "a"), ("tag", "b")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    pushed = [(t["digest"], t.get("tag")) for t in targets(hooked.events(), "push")]
    assert pushed == [(digest, "a"), (digest, "b")]
    hooked.clear()
    assert (await push_manifest(hooked.client, "app", digest, body)).status_code == 201
    (untagged,) = targets(hooked.events(), "push")
    assert "tag" not in untagged and untagged["digest"] == digest


async def test_get_manifest_and_blob_are_pulls_head_is_not(hooked: Hooked) -> None:
    layer = b"pull me" * 50
    digest, body = await push_image(hooked.client, "app", "v1", [layer])
    hooked.clear()
    for method in ("HEAD", "GET"):
        assert (await hooked.client.request(method, "/v2/app/manifests/v1")).status_code == 200
        assert (await hooked.client.request(method, f"/v2/app/manifests/{digest}")).status_code == 200
        assert (await hooked.client.request(method, f"/v2/app/blobs/{sha(layer)}")).status_code == 200
    r = await hooked.client.get(f"/v2/app/blobs/{sha(layer)}", headers={"If-None-Match": f'"{sha(layer)}"'})
    assert r.status_code == 304  # nothing served, nothing pulled
    pulls = hooked.events()
    assert [e["action"] for e in pulls] == ["pull"] * 3
    assert all(e["request"]["method"] == "GET" for e in pulls)
    by_tag, by_digest, blob = (e["target"] for e in pulls)
    assert by_tag == {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "length": len(body),
        "repository": "app",
        "url": f"http://registry.test/v2/app/manifests/{digest}",
        "tag": "v1",
    }
    assert "tag" not in by_digest and by_digest["digest"] == digest
    assert blob["digest"] == sha(layer) and blob["size"] == len(layer) and blob["mediaType"] == BLOB


async def test_cross_repository_mount(hooked: Hooked) -> None:
    data = b"shared layer" * 10
    digest = await push_blob(hooked.client, "base", data)
    hooked.clear()
    r = await hooked.client.post("/v2/derived/blobs/uploads/", params={"mount": digest, "from": "base"})
    assert r.status_code == 201
    (event,) = hooked.events()
    assert event["action"] == "mount"
    assert event["target"] == {
        "mediaType": BLOB,
        "digest": digest,
        "size": len(data),
        "length": len(data),
        "repository": "derived",
        "fromRepository": "base",
        "url": f"http://registry.test/v2/derived/blobs/{digest}",
    }
    hooked.clear()
    r = await hooked.client.post("/v2/other/blobs/uploads/", params={"mount": sha(b"nope"), "from": "base"})
    assert r.status_code == 202 and not hooked.events()  # no mount happened


async def test_deletes_of_tag_manifest_and_blob(hooked: Hooked) -> None:
    layer = b"to delete" * 20
    digest, _ = await push_image(hooked.client, "app", "v1", [layer])
    assert (await push_manifest(hooked.client, "app", "v2", oci_manifest(b"{}", [layer]))).status_code == 201
    hooked.clear()
    assert (await hooked.client.delete("/v2/app/manifests/v2")).status_code == 202
    assert (await hooked.client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    assert (await hooked.client.delete(f"/v2/app/blobs/{sha(layer)}")).status_code == 202
    assert (await hooked.client.delete(f"/v2/app/blobs/{sha(layer)}")).status_code == 404  # no event
    assert targets(hooked.events(), "delete") == [
        {"tag": "v2", "repository": "app"},
        {"digest": digest, "repository": "app"},
        {"digest": sha(layer), "repository": "app"},
    ]
    assert [e["request"]["method"] for e in hooked.events()] == ["DELETE"] * 3


async def test_failed_requests_report_nothing(hooked: Hooked) -> None:
    r = await hooked.client.post("/v2/app/blobs/uploads/", params={"digest": sha(b"other")}, content=b"data")
    assert r.status_code == 400
    assert (await hooked.client.get("/v2/app/manifests/nope")).status_code == 404
    missing = oci_manifest(b"{}", [b"missing"])
    assert (await push_manifest(hooked.client, "app", "v1", missing)).status_code == 400
    assert hooked.events() == []


async def test_each_endpoint_gets_only_what_it_does_not_ignore(make_hooked: Callable[..., Any]) -> None:
    hooked = await make_hooked(
        NotificationEndpoint("all", "http://127.0.0.1:1/a"),
        NotificationEndpoint("no-pulls", "http://127.0.0.1:1/b", ignored_actions=("pull",)),
        NotificationEndpoint("manifests", "http://127.0.0.1:1/c", ignored_mediatypes=(BLOB,)),
        NotificationEndpoint("off", "http://127.0.0.1:1/d", disabled=True),
    )
    digest, _ = await push_image(hooked.client, "app", "v1", [b"layer"])
    assert (await hooked.client.get("/v2/app/manifests/v1")).status_code == 200
    assert (await hooked.client.get(f"/v2/app/blobs/{sha(b'layer')}")).status_code == 200
    every = [(e["action"], e["target"]["mediaType"]) for e in hooked.events("all")]
    assert every == [
        ("push", BLOB),
        ("push", BLOB),
        ("push", OCI_MANIFEST),
        ("pull", OCI_MANIFEST),
        ("pull", BLOB),
    ]
    assert [e["action"] for e in hooked.events("no-pulls")] == ["push"] * 3
    assert [(e["action"], e["target"]["digest"]) for e in hooked.events("manifests")] == [
        ("push", digest),
        ("pull", digest),
    ]
    assert hooked.events("off") == []
    # One event, one id, whichever endpoints receive it.
    assert {e["id"] for e in hooked.events("all")} >= {e["id"] for e in hooked.events("manifests")}


async def test_actor_is_the_authenticated_user(make_hooked: Callable[..., Any], tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret"})
    hooked = await make_hooked(HOOK, settings=htpasswd_settings(htpasswd))
    r = await hooked.client.post(
        "/v2/app/blobs/uploads/",
        params={"digest": sha(b"mine")},
        content=b"mine",
        headers={**basic("alice", "s3cret"), "X-Forwarded-For": "203.0.113.9, 10.0.0.1"},
    )
    assert r.status_code == 201, r.text
    (event,) = hooked.events()
    assert event["actor"] == {"name": "alice"}
    assert event["request"]["addr"] == "203.0.113.9"


async def test_urls_use_the_configured_external_host(make_hooked: Callable[..., Any]) -> None:
    hooked = await make_hooked(HOOK, host="https://registry.example.com")
    digest = await push_blob(hooked.client, "app", b"data")
    (event,) = hooked.events()
    assert event["target"]["url"] == f"https://registry.example.com/v2/app/blobs/{digest}"


async def test_no_endpoints_no_jobs_no_thread(make_hooked: Callable[..., Any]) -> None:
    hooked = await make_hooked()
    digest, _ = await push_image(hooked.client, "app", "v1", [b"layer"])
    assert (await hooked.client.get("/v2/app/manifests/v1")).status_code == 200
    assert (await hooked.client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    notifier: Notifier = hooked.app.state.notifier
    assert not notifier.enabled and notifier._thread is None
    assert hooked.jobs.sent == [] and hooked.jobs.threads == set()


async def test_sends_happen_off_the_event_loop_and_a_failing_broker_fails_no_request(
    hooked: Hooked, caplog: pytest.LogCaptureFixture
) -> None:
    hooked.jobs.fail_notify = True
    with caplog.at_level(logging.ERROR, logger="lading.notify"):
        digest = await push_blob(hooked.client, "app", b"still pushed")
        assert (await hooked.client.get(f"/v2/app/blobs/{digest}")).content == b"still pushed"
        assert hooked.events() == []
    assert hooked.jobs.threads == {"lading-notify"}  # never the event loop's thread
    assert "could not send notification" in caplog.text and "job broker unreachable" in caplog.text
    hooked.jobs.fail_notify = False
    await push_blob(hooked.client, "app", b"after the outage")
    assert len(hooked.events()) == 1


def test_a_full_backlog_drops_events_instead_of_blocking(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    class Stuck:
        def send(self, job: str, **kwargs: Any) -> str:
            gate.wait(10)  # a broker that hangs
            return "id"

    settings = Settings(notifications=(HOOK,))
    notifier = Notifier(settings, Stuck(), backlog=2)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    with caplog.at_level(logging.ERROR, logger="lading.notify"):
        for _ in range(6):  # one in the sender's hands, two queued, the rest dropped
            notifier.emit(Request(scope), "pull", "app", {"digest": sha(b"x")})
    assert "backlog full" in caplog.text
    gate.set()
    notifier.close(10)
