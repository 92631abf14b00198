"""Registry notifications: events in CNCF distribution's envelope, and their delivery to
webhook endpoints (`notifications.endpoints` in config.yml).

The API builds events with `events_for(settings, action, ...)` and sends one NOTIFY_EVENT
job per endpoint that wants the event (kwargs: endpoint name, envelope). The worker's job
(`notify_event`) POSTs the envelope; a failure raises `DeliveryFailed`, which the notify
task retries with backoff, so retries live in the broker and survive a worker restart.
Every event has a stable `id` (uuid4) created once, so a receiver seeing a retried
delivery twice can tell it is the same event (delivery is at least once).

The wire format is distribution's (notifications/event.go): media type
`application/vnd.docker.distribution.events.v2+json`, body `{"events": [...]}`, each event
{id, timestamp, action, target{mediaType, digest, size, length, repository, url, tag?,
fromRepository?}, request{id, addr, host, method, useragent}, actor{name}, source{addr,
instanceID}}. Like distribution, any 2xx or 3xx answer counts as delivered.

Counters (pending / delivered / failed per endpoint) are kept here and reported to hooks
registered with `add_metrics_hook`, so the metrics side can export them without this
module knowing about Prometheus.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx

from pipeline.config.settings import NotificationEndpoint, Settings
from pipeline.errors import DeliveryFailed, OperationUnsupported

if TYPE_CHECKING:
    from pipeline.registry import Registry

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
ACTIONS = ("push", "pull", "mount", "delete")
Action = Literal["push", "pull", "mount", "delete"]
Outcome = Literal["pending", "delivered", "failed"]

# The instance id distribution puts in `source.instanceID`: new for every process start.
INSTANCE_ID = str(uuid.uuid4())


# --- metrics hook -------------------------------------------------------------------------

MetricsHook = Callable[[str, str, int], None]
_hooks: list[MetricsHook] = []
_counts: dict[tuple[str, str], int] = {}
_counts_lock = threading.Lock()


def add_metrics_hook(hook: MetricsHook) -> None:
    """Call `hook(outcome, endpoint, n)` whenever n events become pending (queued for an
    endpoint), are delivered, or fail one delivery attempt."""
    _hooks.append(hook)


def remove_metrics_hook(hook: MetricsHook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


def counts() -> dict[str, dict[str, int]]:
    """This process's totals: {endpoint: {pending, delivered, failed}}."""
    with _counts_lock:
        out: dict[str, dict[str, int]] = {}
        for (outcome, endpoint), n in _counts.items():
            out.setdefault(endpoint, {"pending": 0, "delivered": 0, "failed": 0})[outcome] = n
        return out


def _count(outcome: Outcome, endpoint: str, n: int) -> None:
    with _counts_lock:
        _counts[(outcome, endpoint)] = _counts.get((outcome, endpoint), 0) + n
    for hook in list(_hooks):
        try:
            hook(outcome, endpoint, n)
        except Exception:  # a broken metrics hook must never stop a delivery
            pass


# --- events -------------------------------------------------------------------------------


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(
    action: Action,
    repository: str,
    target: Mapping[str, Any],
    request: Mapping[str, Any] | None = None,
    actor: Mapping[str, Any] | str | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One event. `target` carries mediaType, digest, size (length defaults to size), url,
    and optionally tag / fromRepository / references; `request` carries id, addr, host,
    method, useragent; `actor` is {name} or the name; `source` {addr} (instanceID is this
    process's)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown event action {action!r}")
    tgt: dict[str, Any] = {k: v for k, v in target.items() if v is not None}
    if "size" in tgt:
        tgt.setdefault("length", tgt["size"])
    tgt["repository"] = repository
    req = dict(request or {})
    req.setdefault("id", str(uuid.uuid4()))
    for key in ("method", "useragent"):
        req.setdefault(key, "")
    who = {"name": actor} if isinstance(actor, str) else dict(actor or {})
    src = dict(source or {})
    src.setdefault("instanceID", INSTANCE_ID)
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(),
        "action": action,
        "target": tgt,
        "request": req,
        "actor": who,
        "source": src,
    }


def envelope(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"events": list(events)}


def should_deliver(endpoint: NotificationEndpoint, event: Mapping[str, Any]) -> bool:
    """False when the endpoint is disabled or ignores the event's action or media type."""
    if endpoint.disabled:
        return False
    if event.get("action") in endpoint.ignored_actions:
        return False
    media_type = (event.get("target") or {}).get("mediaType")
    return media_type not in endpoint.ignored_mediatypes


def events_for(
    settings: Settings,
    action: Action,
    repository: str,
    target: Mapping[str, Any],
    request: Mapping[str, Any] | None = None,
    actor: Mapping[str, Any] | str | None = None,
    source: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(endpoint name, envelope) for each configured endpoint that wants this event — one
    NOTIFY_EVENT job each. Every endpoint gets the same event (same id)."""
    if not settings.notifications:
        return []
    event = build_event(action, repository, target, request, actor, source)
    out = []
    for endpoint in settings.notifications:
        if should_deliver(endpoint, event):
            out.append((endpoint.name, envelope([event])))
            _count("pending", endpoint.name, 1)
    return out


# --- delivery -----------------------------------------------------------------------------


def _headers(endpoint: NotificationEndpoint) -> list[tuple[str, str]]:
    headers = [("Content-Type", EVENTS_MEDIA_TYPE)]
    for name, values in endpoint.headers.items():
        for value in values if isinstance(values, list | tuple) else [values]:
            headers.append((name, str(value)))
    return headers


def deliver(endpoint: NotificationEndpoint, body: Mapping[str, Any]) -> int:
    """POST the envelope to the endpoint; the HTTP status on success (2xx/3xx). Raises
    DeliveryFailed (retryable) on any other status, a timeout or a connection error."""
    n = len(body.get("events") or [])
    try:
        response = httpx.post(
            endpoint.url,
            json=dict(body),
            headers=_headers(endpoint),
            timeout=endpoint.timeout_seconds or None,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        _count("failed", endpoint.name, n)
        raise DeliveryFailed({"endpoint": endpoint.name, "error": f"{type(exc).__name__}: {exc}"}) from None
    if not 200 <= response.status_code < 400:
        _count("failed", endpoint.name, n)
        raise DeliveryFailed({"endpoint": endpoint.name, "status": response.status_code})
    _count("delivered", endpoint.name, n)
    return response.status_code


def notify_event(registry: Registry, endpoint: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The NOTIFY_EVENT job: deliver `envelope` to the configured endpoint named `endpoint`.
    Events the endpoint now ignores (configuration changed since) are dropped. Returns
    {endpoint, delivered, status}; OperationUnsupported for an endpoint not configured."""
    found = next((e for e in registry.settings.notifications if e.name == endpoint), None)
    if found is None:
        raise OperationUnsupported(f"no notification endpoint named {endpoint!r}")
    wanted = [e for e in envelope.get("events") or [] if should_deliver(found, e)]
    if not wanted:
        return {"endpoint": endpoint, "delivered": 0, "status": None}
    status = deliver(found, {"events": wanted})
    return {"endpoint": endpoint, "delivered": len(wanted), "status": status}
