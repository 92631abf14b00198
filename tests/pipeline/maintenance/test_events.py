"""Notification events: distribution's envelope, endpoint filtering, and delivery to a real
HTTP receiver (failures are retryable DeliveryFailed, never silent)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from pipeline import events
from pipeline.config import NotificationEndpoint, Settings, StorageSettings
from pipeline.errors import DeliveryFailed, OperationUnsupported
from pipeline.registry import Registry
from tests.pipeline.maintenance.webhook import Receiver, free_port

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DIGEST = "sha256:" + "ab" * 32


def target(media_type: str = MANIFEST, **extra: object) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": DIGEST,
        "size": 528,
        "url": f"http://r/v2/app/manifests/{DIGEST}",
        **extra,
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def endpoint(url: str, **kw: object) -> NotificationEndpoint:
    return NotificationEndpoint(name=str(kw.pop("name", "hook")), url=url, **kw)  # type: ignore[arg-type]


def test_event_has_distributions_shape() -> None:
    event = events.build_event(
        "push",
        "team/app",
        target(tag="v1"),
        request={"id": "r1", "addr": "10.0.0.1:5555", "host": "reg:5000", "method": "PUT", "useragent": "ua"},
        actor="alice",
        source={"addr": "node1:5000"},
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", event["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    assert event["action"] == "push"
    assert event["target"] == {**target(tag="v1"), "length": 528, "repository": "team/app"}
    assert event["request"]["method"] == "PUT" and event["actor"] == {"name": "alice"}
    assert event["source"] == {"addr": "node1:5000", "instanceID": events.INSTANCE_ID}
    assert events.envelope([event]) == {"events": [event]}
    assert events.build_event("pull", "a", target())["id"] != event["id"]
    with pytest.raises(ValueError):
        events.build_event("frobnicate", "a", target())  # type: ignore[arg-type]


def test_endpoints_filter_by_action_and_media_type() -> None:
    quiet = endpoint("http://x", ignored_actions=("pull",), ignored_mediatypes=(LAYER,))
    assert events.should_deliver(quiet, events.build_event("push", "a", target()))
    assert not events.should_deliver(quiet, events.build_event("pull", "a", target()))
    assert not events.should_deliver(quiet, events.build_event("push", "a", target(LAYER)))
    disabled = endpoint("http://x", disabled=True)
    assert not events.should_deliver(disabled, events.build_event("push", "a", target()))


def test_events_for_gives_each_interested_endpoint_the_same_event() -> None:
    settings = Settings(
        notifications=(
            endpoint("http://a", name="a"),
            endpoint("http://b", name="b", ignored_actions=("delete",)),
            endpoint("http://c", name="c"),
        )
    )
    jobs = events.events_for(settings, "push", "app", target(tag="v1"))
    assert [name for name, _ in jobs] == ["a", "b", "c"]
    ids = {env["events"][0]["id"] for _, env in jobs}
    assert len(ids) == 1
    assert [name for name, _ in events.events_for(settings, "delete", "app", target())] == ["a", "c"]
    assert events.events_for(Settings(), "push", "app", target()) == []


def test_delivery_posts_the_envelope_with_the_endpoint_headers(receiver: Receiver) -> None:
    hook = endpoint(receiver.url, headers={"Authorization": ["Bearer s3cret"], "X-Multi": ["1", "2"]})
    env = events.envelope([events.build_event("push", "app", target())])
    assert events.deliver(hook, env) == 200
    [request] = receiver.requests
    assert request["body"] == env
    assert request["headers"]["Content-Type"] == events.EVENTS_MEDIA_TYPE
    assert request["headers"]["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize("status", [404, 500, 503])
def test_a_refusing_endpoint_is_a_retryable_failure(receiver: Receiver, status: int) -> None:
    receiver.status = status
    with pytest.raises(DeliveryFailed) as err:
        events.deliver(endpoint(receiver.url), events.envelope([events.build_event("push", "a", target())]))
    assert err.value.detail["status"] == status


def test_an_unreachable_endpoint_is_a_retryable_failure() -> None:
    with pytest.raises(DeliveryFailed):
        events.deliver(endpoint(f"http://127.0.0.1:{free_port()}/x", timeout_seconds=2.0), {"events": []})


def test_metrics_hook_counts_pending_delivered_and_failed(receiver: Receiver) -> None:
    seen: list[tuple[str, str, int]] = []

    def hook(outcome: str, name: str, n: int) -> None:
        seen.append((outcome, name, n))

    events.add_metrics_hook(hook)
    try:
        settings = Settings(notifications=(endpoint(receiver.url, name="metrics-test"),))
        [(name, env)] = events.events_for(settings, "push", "app", target())
        events.deliver(settings.notifications[0], env)
        receiver.status = 500
        with pytest.raises(DeliveryFailed):
            events.deliver(settings.notifications[0], env)
    finally:
        events.remove_metrics_hook(hook)
    assert seen == [("pending", name, 1), ("delivered", name, 1), ("failed", name, 1)]
    assert events.counts()["metrics-test"] == {"pending": 1, "delivered": 1, "failed": 1}


def test_notify_job_delivers_to_the_named_endpoint_and_drops_what_it_now_ignores(receiver: Receiver) -> None:
    settings = Settings(
        storage=StorageSettings(driver="inmemory"),
        notifications=(endpoint(receiver.url, name="hook", ignored_actions=("pull",)),),
    )
    registry = Registry.in_memory(settings)
    push, pull = events.build_event("push", "a", target()), events.build_event("pull", "a", target())
    result = events.notify_event(registry, endpoint="hook", envelope={"events": [push, pull]})
    assert result == {"endpoint": "hook", "delivered": 1, "status": 200}
    assert receiver.requests[0]["body"] == {"events": [push]}
    with pytest.raises(OperationUnsupported):
        events.notify_event(registry, endpoint="nope", envelope={"events": [push]})
