"""Registry notifications from the API: the events a client's requests cause, handed to
the notify queue without ever slowing or failing those requests.

Routes report what happened through `RequestContext.notify_blob` / `notify_manifest`,
which call `Notifier.emit` — the same moments CNCF distribution emits at: `push` on the
201 of a completing blob PUT, a monolithic POST and a manifest PUT (one event per tag);
`pull` on a GET (not HEAD) that serves a manifest or a blob (a redirect included);
`mount` on a cross-repository mount's 201; `delete` on the 202 of a manifest, tag or blob
DELETE. `pipeline.events.events_for` builds the event and picks the endpoints that want
it; each (endpoint, envelope) becomes one NOTIFY_EVENT job.

`JobClient.send` publishes synchronously in the caller's thread, so jobs are sent by one
daemon thread fed through a bounded queue: the request only appends to it. When the
broker is unreachable the thread waits on it while the queue fills; past `BACKLOG` the
newest events are dropped and logged (a push must never wait for, or fail because of, a
notification). `close()` drains the queue at shutdown (the app's lifespan calls it).

With no endpoints configured the notifier is disabled and `emit` returns at once.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from api.request_id import current_request_id
from pipeline import events
from pipeline.config import Settings
from pipeline.events import Action
from pipeline.jobs import NOTIFY_EVENT, JobClient

__all__ = ["BACKLOG", "BLOB_MEDIA_TYPE", "Notifier", "actor_of", "request_record"]

log = logging.getLogger("lading.notify")

BACKLOG = 10_000  # events waiting for the sender thread before new ones are dropped
BLOB_MEDIA_TYPE = "application/octet-stream"  # what distribution reports for any blob

Sends = list[tuple[str, dict[str, Any]]]


def _remote_addr(request: Request) -> str:
    """The client's address as distribution reports it: the first X-Forwarded-For hop,
    else X-Real-Ip, else the peer's host:port."""
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return forwarded
    real = request.headers.get("x-real-ip", "").strip()
    if real:
        return real
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else ""


def request_record(request: Request) -> dict[str, str]:
    """The event's `request` part: id (the request id of api.logs), addr, host, method,
    useragent."""
    record = {
        "addr": _remote_addr(request),
        "host": request.headers.get("host", ""),
        "method": request.method,
        "useragent": request.headers.get("user-agent", ""),
    }
    request_id = current_request_id() or getattr(request.state, "request_id", None)
    if request_id:
        record["id"] = str(request_id)
    return record


def actor_of(request: Request) -> dict[str, str]:
    """{"name": user} when access control identified the caller, else {} (anonymous or
    auth off), as distribution leaves `actor` empty."""
    identity = getattr(request.state, "identity", None)
    name = getattr(identity, "name", None)
    return {"name": str(name)} if name else {}


def _source_addr(settings: Settings) -> str:
    """hostname:port of this registry, for the event's `source.addr`."""
    port = settings.http.addr.rpartition(":")[2] if ":" in settings.http.addr else ""
    host = socket.gethostname()
    return f"{host}:{port}" if port else host


class Notifier:
    """Turns route outcomes into NOTIFY_EVENT jobs, sent off the event loop."""

    def __init__(self, settings: Settings, jobs: JobClient, backlog: int = BACKLOG) -> None:
        self.settings = settings
        self.jobs = jobs
        self.enabled = bool(settings.notifications)
        self.source = {"addr": _source_addr(settings)} if self.enabled else {}
        self.backlog = backlog
        self._queue: queue.Queue[Sends | None] = queue.Queue(backlog)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def emit(self, request: Request, action: Action, repository: str, target: Mapping[str, Any]) -> None:
        """Queue `action` on `target` in `repository` for every endpoint that wants it.
        Never raises and never blocks; a relative `url` in the target is made absolute
        with the request's scheme and host."""
        if not self.enabled:
            return
        try:
            url = target.get("url")
            if isinstance(url, str) and url.startswith("/"):
                target = {**target, "url": f"{request.url.scheme}://{request.url.netloc}{url}"}
            sends = events.events_for(
                self.settings,
                action,
                repository,
                target,
                request=request_record(request),
                actor=actor_of(request),
                source=self.source,
            )
            if sends:
                self._enqueue(sends)
        except Exception:
            log.exception("could not queue a %s notification for %s", action, repository)

    def _enqueue(self, sends: Sends) -> None:
        with self._lock:
            if self._closed:
                log.error("notifier closed; dropping %d notification(s)", len(sends))
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lading-notify", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(sends)
        except queue.Full:
            log.error("notification backlog full (%d); dropping %d notification(s)", self.backlog, len(sends))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                for endpoint, envelope in item:
                    self._send(endpoint, envelope)
            finally:
                self._queue.task_done()

    def _send(self, endpoint: str, envelope: dict[str, Any]) -> None:
        try:
            self.jobs.send(NOTIFY_EVENT, endpoint=endpoint, envelope=envelope)
        except Exception as exc:
            ids = [e.get("id") for e in envelope.get("events") or []]
            log.error("could not send notification(s) %s to endpoint %s: %s", ids, endpoint, exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was handed to the job client; False on timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (waiting at most `timeout`) and stop the sender thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return  # still stuck on the broker: the daemon thread dies with the process
        thread.join(timeout)
