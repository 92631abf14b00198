"""The Celery app factory: every job registered with its queue and delivery policy, and the
configuration the notes call for (late acks, visibility timeouts, serializers, beat)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import _state as celery_state
from celery import current_app

from pipeline import jobs
from pipeline.config import (
    CelerySettings,
    MaintenanceSettings,
    Settings,
    StorageSettings,
    UploadPurging,
    load_settings,
)
from pipeline.errors import ConfigurationError, StorageUnavailable
from tests.support import redis_server
from workers.app import create_app
from workers.beat import beat_schedule
from workers.embedded import InProcessBackend, WakingTransport
from workers.leases import LEASE, LeaseKeeper
from workers.tasks import POLICIES

REDIS = redis_server.url(7)


def redis_settings(**extra: object) -> Settings:
    return Settings(
        storage=StorageSettings(driver="inmemory"),
        celery=CelerySettings(broker_url=REDIS, result_backend=REDIS, extra=dict(extra)),
    )


def test_every_job_name_is_a_registered_task_on_its_queue() -> None:
    app = create_app(redis_settings())
    for name in jobs.ALL_JOBS:
        task = app.tasks[name]
        policy = POLICIES[name]
        assert app.amqp.router.route({}, name)["queue"].name == jobs.ROUTES[name]
        assert task.acks_late is policy.acks_late
        assert task.reject_on_worker_lost is policy.acks_late
        assert task.autoretry_for == policy.retry_for and StorageUnavailable in task.autoretry_for
        assert task.max_retries == policy.max_retries and task.retry_jitter
        assert task.soft_time_limit < task.time_limit
        assert task.ignore_result is not policy.store_result


def test_commit_jobs_are_late_acked_and_allowed_time_for_multi_gigabyte_blobs() -> None:
    app = create_app(redis_settings())
    for name in (jobs.COMMIT_BLOB, jobs.TARSUM, jobs.COMMIT_MANIFEST):
        task = app.tasks[name]
        assert task.acks_late and task.reject_on_worker_lost and not task.ignore_result
        assert task.soft_time_limit >= 900
    # nobody waits for an advance, and a lost one only means the commit hashes more
    advance = app.tasks[jobs.ADVANCE_DIGEST]
    assert not advance.acks_late and advance.ignore_result
    assert app.tasks[jobs.COMMIT_BLOB].soft_time_limit >= 3600
    assert app.tasks[jobs.NOTIFY_EVENT].max_retries >= 10


def test_visibility_timeout_is_a_short_lease_that_workers_renew() -> None:
    app = create_app(redis_settings())
    conf = app.conf
    broker = conf.broker_transport_options["visibility_timeout"]
    assert broker == conf.result_backend_transport_options["visibility_timeout"] == LEASE
    assert broker <= 60  # a killed worker's jobs come back within a minute
    # shorter than the longest job: only because running jobs' leases are renewed
    assert any(p.acks_late and p.time_limit > broker for p in POLICIES.values())
    assert LeaseKeeper in app.steps["consumer"]
    # every Redis operation is bounded (a frozen Redis never blocks a request forever)
    assert conf.broker_transport_options["socket_timeout"] > 0
    assert conf.broker_transport_options["socket_connect_timeout"] > 0
    assert conf.redis_socket_timeout > 0 and conf.redis_socket_connect_timeout > 0


def test_production_settings_from_the_notes() -> None:
    conf = create_app(redis_settings()).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # Off: Flower enables worker events while it runs (tests/e2e/test_flower.py).
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.broker_connection_retry_on_startup
    assert conf.result_expires
    assert {q.name for q in conf.task_queues} == set(jobs.QUEUES)


def test_extra_settings_go_last_and_merge_transport_options() -> None:
    conf = create_app(
        redis_settings(worker_prefetch_multiplier=4, broker_transport_options={"visibility_timeout": 5})
    ).conf
    assert conf.worker_prefetch_multiplier == 4
    assert conf.broker_transport_options["visibility_timeout"] == 5


def test_task_events_are_off_in_embedded_mode_unless_asked_for() -> None:
    # Nothing outside the process can attach to the in-memory broker: events would cost
    # a fifth of the worker's time for nobody.
    conf = create_app(Settings(storage=StorageSettings(driver="inmemory"))).conf
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
    asked = CelerySettings(extra={"worker_send_task_events": True, "task_send_sent_event": True})
    conf = create_app(Settings(storage=StorageSettings(driver="inmemory"), celery=asked)).conf
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_an_operator_can_turn_task_events_on_in_config_yml(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "storage: {inmemory: {}}\n"
        f"celery: {{broker_url: '{REDIS}', worker_send_task_events: true, task_send_sent_event: true}}\n"
    )
    conf = create_app(load_settings(str(config), {})).conf
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True
    assert conf.broker_url == REDIS


def test_a_non_redis_broker_needs_a_result_backend() -> None:
    with pytest.raises(ConfigurationError, match="result_backend"):
        create_app(Settings(celery=CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:5672//")))
    amqp = CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:5672//", result_backend=REDIS)
    conf = create_app(Settings(celery=amqp)).conf
    assert conf.broker_url.startswith("amqp://") and conf.result_backend == REDIS


def test_a_redis_broker_doubles_as_result_backend() -> None:
    conf = create_app(Settings(celery=CelerySettings(broker_url=REDIS))).conf
    assert conf.result_backend == REDIS


def test_embedded_mode_uses_the_woken_memory_broker_and_a_shared_backend() -> None:
    app = create_app(Settings(storage=StorageSettings(driver="inmemory")))
    assert app.conf.broker_url.startswith("memory://")
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, WakingTransport)
    assert isinstance(app.backend, InProcessBackend)
    app.backend.store_result("job-1", {"ok": True, "value": {}}, "SUCCESS")
    import threading

    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(app.backend.get_task_meta("job-1")["status"]))
    reader.start()
    reader.join()
    assert seen == ["SUCCESS"]  # another thread (another backend instance) sees the result


def test_the_factory_configures_nothing_global() -> None:
    before = celery_state.default_app
    app = create_app(redis_settings())
    assert celery_state.default_app is before
    assert current_app._get_current_object() is not app
    other = create_app(redis_settings())
    assert other.tasks[jobs.COMMIT_BLOB] is not app.tasks[jobs.COMMIT_BLOB]


def test_beat_schedule_follows_the_maintenance_settings() -> None:
    default = beat_schedule(Settings())
    assert {e["task"] for e in default.values()} == {jobs.SCRUB, jobs.PURGE_UPLOADS, jobs.RECONCILE}
    assert all(e["options"]["queue"] == jobs.MAINTENANCE for e in default.values())

    settings = Settings(
        storage=StorageSettings(upload_purging=UploadPurging(enabled=False)),
        maintenance=MaintenanceSettings(
            scrub_enabled=False, gc_enabled=True, gc_interval_seconds=60, reconcile_interval_seconds=30
        ),
    )
    schedule = beat_schedule(settings)
    assert {e["task"]: e["schedule"] for e in schedule.values()} == {
        jobs.GARBAGE_COLLECT: 60.0,
        jobs.RECONCILE: 30.0,
    }
    assert create_app(settings).conf.beat_schedule == schedule


# --- the celery: section is held to Celery's own setting names ---------------------------


def test_celery_setting_names_come_from_celerys_documented_settings_table() -> None:
    # workers.app.celery_setting_names reads celery.app.defaults (NAMESPACES, flatten), the
    # table Celery documents as "Configuration introspection and defaults". This fails the
    # day that table moves or changes shape, instead of every key becoming "unknown".
    from celery.app.defaults import NAMESPACES, flatten

    from workers.app import celery_setting_names

    names = celery_setting_names()
    assert names == {name for name, _ in flatten(NAMESPACES)}
    assert len(names) > 150
    assert {
        "broker_url",
        "result_backend",
        "broker_transport_options",
        "worker_prefetch_multiplier",
        "task_acks_late",
        "worker_send_task_events",
        "beat_schedule",
        "worker_hijack_root_logger",
    } <= names


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"broker_ur": "x"}, "celery.broker_ur: not a Celery setting; did you mean celery.broker_url?"),
        ({"worker_prefetch_multiplyer": 1}, "did you mean celery.worker_prefetch_multiplier?"),
        ({"commit_timout": 5}, "did you mean celery.commit_timeout?"),
        ({"my_own_thing": 1}, "celery.my_own_thing: not a Celery setting"),
    ],
)
def test_a_celery_key_celery_does_not_know_stops_the_app(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?").replace(".", r"\.")):
        create_app(redis_settings(**extra))


def test_every_real_celery_setting_is_accepted() -> None:
    app = create_app(redis_settings(worker_prefetch_multiplier=4, task_time_limit=60))
    assert app.conf.worker_prefetch_multiplier == 4 and app.conf.task_time_limit == 60
