"""Webhook notifications end to end: `lading serve` (embedded: API and worker in one
process) configured with a notifications endpoint, skopeo pushing and pulling a real image,
and a plain http.server receiver getting distribution's envelope for every blob and the
manifest."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.events import EVENTS_MEDIA_TYPE
from tests.pipeline.maintenance.webhook import Receiver
from tests.support import skopeo
from tests.support.images import OCI_MANIFEST, make_image, write_oci_layout
from tests.support.lading import lading_embedded

pytestmark = pytest.mark.e2e

WAIT = 60.0  # bound on waiting for deliveries


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def lading(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("lading-notify")
    config = workdir / "config.yml"
    endpoint = {"name": "hook", "url": receiver.url, "timeout": "2s", "headers": {"X-Lading-Test": ["e2e"]}}
    config.write_text(yaml.safe_dump({"version": 0.1, "notifications": {"endpoints": [endpoint]}}))
    with lading_embedded(workdir / "root", workdir, LADING_CONFIG=str(config)) as host:
        yield host


def wait_for(receiver: Receiver, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The accepted events once `done(events)` holds (fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    with receiver.arrived:
        while not done(receiver.accepted_events()):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"events so far: {receiver.accepted_events()}"
            receiver.arrived.wait(min(remaining, 1.0))
        return receiver.accepted_events()


def of(events: list[dict[str, Any]], action: str, repo: str) -> dict[str, dict[str, Any]]:
    """digest -> event, for `action` in `repo`."""
    return {
        e["target"]["digest"]: e
        for e in events
        if e["action"] == action and e["target"]["repository"] == repo
    }


def test_skopeo_push_and_pull_are_delivered_in_distributions_envelope(
    lading: str, receiver: Receiver, tmp_path: Path
) -> None:
    image = make_image([2048, 300_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    repo = f"e2e/{uuid.uuid4().hex[:8]}/app"
    skopeo.copy(f"oci:{layout}:v1", f"docker://{lading}/{repo}:v1")

    blobs = {image.config_digest, *(layer.digest for layer in image.layers)}
    wanted = {*blobs, image.manifest_digest}
    events = wait_for(receiver, lambda evs: wanted <= set(of(evs, "push", repo)))
    pushes = of(events, "push", repo)
    manifest = pushes[image.manifest_digest]["target"]
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["tag"] == "v1"
    assert manifest["size"] == len(image.manifest)
    assert manifest["url"] == f"http://{lading}/v2/{repo}/manifests/{image.manifest_digest}"
    for digest in blobs:
        target = pushes[digest]["target"]
        assert target["mediaType"] == "application/octet-stream"
        assert target["size"] == len(image.blobs[digest])
        assert target["url"] == f"http://{lading}/v2/{repo}/blobs/{digest}"
    for event in pushes.values():
        uuid.UUID(event["id"])
        assert event["request"]["method"] in ("PUT", "POST")
        assert event["request"]["useragent"].startswith("skopeo/")
        assert event["request"]["id"] and event["source"]["instanceID"]
    requests = [r for r in receiver.requests if r["body"]["events"][0]["target"]["repository"] == repo]
    assert {r["headers"]["Content-Type"] for r in requests} == {EVENTS_MEDIA_TYPE}
    assert {r["headers"]["X-Lading-Test"] for r in requests} == {"e2e"}
    # Stable ids: one id per event; a redelivery carries the same id with the same content.
    by_id: dict[str, dict[str, Any]] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event
    assert len({pushes[d]["id"] for d in wanted}) == len(wanted)

    skopeo.copy(f"docker://{lading}/{repo}:v1", f"oci:{tmp_path / 'pulled'}:v1")
    events = wait_for(receiver, lambda evs: wanted <= set(of(evs, "pull", repo)))
    pulls = of(events, "pull", repo)
    assert all(e["request"]["method"] == "GET" for e in pulls.values())
    assert not {e["id"] for e in pulls.values()} & {e["id"] for e in pushes.values()}
