"""The Celery internals Lading still uses, pinned: each test fails the day Celery changes
one of them (and names where it is used).

- api.jobclient._Sender publishes the task message `Celery.send_task` would, without its
  per-job costs (route resolution, the Redis backend's per-job pub/sub subscription):
  `Task._get_exec_options`, `app.amqp.create_task_message` / `send_task_message` and
  `app.thread_oid`.
- workers.embedded makes the app the process default while the in-process worker runs (the
  pool threads look tasks up on `current_app`): `celery._state.default_app` /
  `set_default_app`, and stops the worker loop with `celery.worker.state.should_stop` /
  `should_terminate`.
"""

from __future__ import annotations

import inspect

from celery import Celery
from celery import _state as celery_state
from celery.worker import state as worker_state

from pipeline import jobs
from pipeline.config import CelerySettings, Settings
from workers.app import create_app


def embedded_app() -> Celery:
    return create_app(Settings(celery=CelerySettings()))


def test_the_sender_internals_exist_with_the_arguments_used() -> None:
    app = embedded_app()
    task = app.tasks[jobs.COMMIT_MANIFEST]
    options = task._get_exec_options()
    assert {"queue", "time_limit", "soft_time_limit", "serializer"} <= set(options)
    params = inspect.signature(app.amqp.create_task_message).parameters
    used = {"time_limit", "soft_time_limit", "create_sent_event", "reply_to", "ignore_result", "argsrepr"}
    assert used | {"kwargsrepr", "expires"} <= set(params)
    message = app.amqp.create_task_message(
        "id", jobs.COMMIT_MANIFEST, (), {"a": 1}, reply_to=app.thread_oid, expires=60.0, kwargsrepr="{}"
    )
    assert message.headers["id"] == "id" and message.headers["expires"]
    assert {"producer", "name", "message"} <= set(inspect.signature(app.amqp.send_task_message).parameters)
    assert isinstance(app.thread_oid, str)


def test_the_embedded_worker_internals_exist() -> None:
    app = embedded_app()
    previous = celery_state.default_app
    celery_state.set_default_app(app)
    try:
        assert celery_state.default_app is app
    finally:
        celery_state.set_default_app(previous)
    assert hasattr(worker_state, "should_stop") and hasattr(worker_state, "should_terminate")
