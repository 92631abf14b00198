"""The Celery application factory: `create_app(settings) -> Celery`.

Nothing is configured at import time and the app is never made the current or default
app, so several apps (tests, benchmarks) can live in one process. The broker and result
backend come from `settings.celery`: Redis or RabbitMQ (`amqp://`) in production, and in
embedded mode kombu's in-process `memory://` transport with `InProcessBackend` (one result
store per app object: the API's job client and the embedded worker must share the app).

`celery_config(settings)` is the whole configuration as a plain dict; `settings.celery.extra`
goes on top of it (dict-valued transport options are merged key by key, so overriding one
option keeps the rest).

Task events (`worker_send_task_events`, `task_send_sent_event`) are off by default: each job
would publish one `task-sent` event from the API and received/started/succeeded events from
the worker, which `python -m bench` measured at ~40% of scaled small-blob throughput. Flower
turns worker events on itself: its `enable_events` option (on by default) broadcasts
`enable_events` every 5 s, so monitoring costs CPU only while someone runs Flower, and a
worker started after Flower is covered within seconds. An operator who wants them always
(e.g. another event consumer) sets, in config.yml:

    celery:
      worker_send_task_events: true
      task_send_sent_event: true

Signed jobs (`lading.signing`, `signing_config`): with a key and certificate, every job
message is signed (Celery's `auth` serializer: RSA-PSS over the JSON body) and workers
accept nothing else, so Flower's send-task or any client of the broker without the key
cannot make a worker commit a tag. RSA-2048 costs ~0.25 ms of CPU to sign a job and
~0.02 ms to verify it (RSA-3072: 0.65 / 0.04 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from pipeline import jobs
from pipeline.config import CELERY_SECTION_KEYS, Settings, misspelling_of
from pipeline.errors import ConfigurationError
from pipeline.infra.coordination import celery_url, coordination_for, is_redis, kind_of
from pipeline.registry import Registry
from workers.beat import beat_schedule
from workers.embedded import BACKEND as EMBEDDED_BACKEND
from workers.embedded import TRANSPORT as EMBEDDED_TRANSPORT
from workers.leases import RESTORE_INTERVAL, LeaseKeeper
from workers.logs import tag_job_logs
from workers.results import backend_class
from workers.tasks import register_tasks, visibility_timeout
from workers.transport import TRANSPORT as REDIS_TRANSPORT

EMBEDDED_BROKER = "memory://localhost/"
# kombu's memory transport, woken on each message instead of polled (workers.embedded);
# the interval only bounds one sleep of its consumer.
EMBEDDED_POLLING_INTERVAL = 1.0
RESULT_EXPIRES = 3600  # the API waits minutes at most; nobody reads a result later
# Every Redis operation of the broker and the result backend is bounded: a frozen or
# partitioned Redis makes an operation fail after this many seconds (kombu's default is
# no timeout at all, so a publish to a SIGSTOPped Redis blocked forever).
REDIS_SOCKET_TIMEOUT = 5.0
REDIS_CONNECT_TIMEOUT = 5.0

_MERGED = ("broker_transport_options", "result_backend_transport_options")
_SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting Lading runs with, before `settings.celery.extra`."""
    cfg = settings.celery
    visibility = visibility_timeout()
    broker_options: dict[str, Any] = {
        "visibility_timeout": visibility,
        # Each worker looks for expired leases (a killed worker's jobs) this often.
        "unacked_restore_interval": RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
    }
    results_options: dict[str, Any] = {"visibility_timeout": visibility}
    redis_timeouts: dict[str, Any] = {}
    transport: dict[str, Any] = {}
    if cfg.embedded:
        broker_url: str = EMBEDDED_BROKER
        result_backend = cfg.result_backend or EMBEDDED_BACKEND
        broker_options["polling_interval"] = EMBEDDED_POLLING_INTERVAL
        transport["broker_transport"] = EMBEDDED_TRANSPORT
    else:
        # Refuses a configuration with no Redis for locks (pipeline.infra.coordination).
        coordination_for(settings)
        broker_url = celery_url(str(cfg.broker_url))
        # A Redis broker doubles as the result backend unless one is named. Any other broker
        # needs one named: `rpc://` would deliver a result only to the process that sent the job.
        if cfg.result_backend:
            result_backend = celery_url(cfg.result_backend)
        elif is_redis(broker_url):
            result_backend = broker_url
            if kind_of(broker_url) == "sentinel":  # the backend finds the master the same way
                sentinel = cfg.extra.get("broker_transport_options") or {}
                results_options.update({k: v for k, v in sentinel.items() if k in _SENTINEL_OPTIONS})
        else:
            raise ConfigurationError(
                "celery.result_backend",
                f"celery.result_backend: required with broker {broker_url.split('://', 1)[0]}://",
            )
        scheme = broker_url.split("://", 1)[0]
        if is_redis(broker_url):
            broker_options["socket_timeout"] = REDIS_SOCKET_TIMEOUT
            broker_options["socket_connect_timeout"] = REDIS_CONNECT_TIMEOUT
        if scheme in ("redis", "rediss"):
            # kombu's Redis transport minus a crash on Redis restarts (workers.transport).
            transport["broker_transport"] = REDIS_TRANSPORT
        redis_timeouts = {
            "redis_socket_timeout": REDIS_SOCKET_TIMEOUT,
            "redis_socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            "redis_retry_on_timeout": False,
        }
    return {
        "broker_url": broker_url,
        **transport,
        "result_backend": result_backend,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": results_options,
        **redis_timeouts,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in jobs.QUEUES],
        "task_routes": {name: {"queue": queue, "routing_key": queue} for name, queue in jobs.ROUTES.items()},
        # Celery's own periodic tasks (backend cleanup) would otherwise go to an unconsumed queue.
        "task_default_queue": jobs.MAINTENANCE,
        "task_default_exchange": jobs.MAINTENANCE,
        "task_default_routing_key": jobs.MAINTENANCE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Jobs are idempotent: a commit already running survives a broker blip and its
        # redelivery finds the work done, instead of being cancelled half-way.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Off: Flower enables worker events while it runs (see the module docstring).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_track_started": False,
        "worker_disable_rate_limits": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": RESULT_EXPIRES,
        "result_extended": False,
        "enable_utc": True,
        "timezone": "UTC",
        "beat_schedule": beat_schedule(settings),
    }


def celery_setting_names() -> frozenset[str]:
    """Every setting name Celery reads, from its documented settings table
    (`celery.app.defaults.NAMESPACES`, flattened to the lowercase names of its docs)."""
    from celery.app.defaults import NAMESPACES, flatten

    return frozenset(name for name, _option in flatten(NAMESPACES))


def check_extra(extra: dict[str, Any]) -> None:
    """ConfigurationError for a `celery:` key that is neither Lading's nor a Celery setting:
    `app.conf` would take it silently and nothing would read it (`broker_ur` would leave
    the registry in embedded mode without a word)."""
    names = celery_setting_names()
    for key in extra:
        if key in names:
            continue
        meant = misspelling_of(key, names | CELERY_SECTION_KEYS)
        hint = f"did you mean celery.{meant}?" if meant else "see Celery's configuration reference"
        raise ConfigurationError(f"celery.{key}", f"celery.{key}: not a Celery setting; {hint}")


def apply_extra(config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`config` with `extra` on top; transport option dicts are merged, not replaced."""
    merged = dict(config)
    for key, value in extra.items():
        if key in _MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def signing_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for signed job messages (`lading.signing`; none when embedded:
    the in-process broker is not reachable from outside). Workers accept only `auth`
    content, so an unsigned job is refused before it is decoded."""
    signing = settings.signing
    if not signing.enabled or settings.celery.embedded:
        return {}
    return {
        # Without a key this process can watch but not send (Flower): its sends go out
        # unsigned and every worker refuses them.
        "task_serializer": "auth" if signing.key else "json",
        "accept_content": ["auth"],
        "security_key": signing.key or None,
        "security_certificate": signing.certificate,
        "security_cert_store": signing.trusted or signing.certificate,
        "security_digest": "sha256",
    }


def _setup_signing(app: Celery, settings: Settings) -> None:
    """Register Celery's `auth` serializer (process-wide: kombu has one registry) with the
    key and trusted certificates, and disable every other serializer but json (results and
    events stay json). A file that cannot be read or a non-RSA key is a ConfigurationError."""
    signing = settings.signing
    if not signing.enabled or settings.celery.embedded:
        return
    from celery.exceptions import SecurityError
    from celery.security import register_auth
    from kombu.serialization import disable_insecure_serializers

    try:
        if signing.key:
            app.setup_security(allowed_serializers=["json"], digest="sha256")
        else:
            disable_insecure_serializers(allowed=["json"])
            register_auth(store=signing.trusted or signing.certificate, digest="sha256")
    except (OSError, SecurityError, ValueError) as exc:
        raise ConfigurationError(f"lading.signing: {exc}") from None


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    registry_factory: Callable[[], Registry] | None = None,
    main: str = "lading",
) -> Celery:
    """A configured Celery app with one task per job name registered.

    `registry`: the Registry the tasks use (embedded mode shares the API's, which an
    in-memory storage driver requires); else each worker process builds its own on its
    first job with `registry_factory` (lading.composition's), by default
    `pipeline.registry.build_registry(settings)`."""
    check_extra(dict(settings.celery.extra))
    config = apply_extra({**celery_config(settings), **signing_config(settings)}, dict(settings.celery.extra))
    app = Celery(main, set_as_current=False)
    app.conf.update(config)
    # A Redis result backend stores each result in one round trip (workers.results).
    backend = config.get("result_backend")
    app.backend_cls = backend_class(backend) if isinstance(backend, str) else None
    _setup_signing(app, settings)
    register_tasks(app, settings, registry=registry, factory=registry_factory)
    tag_job_logs()
    app.steps["consumer"].add(LeaseKeeper)
    return app
