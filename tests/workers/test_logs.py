"""One log format for every process: `lading worker` and `lading beat` write the API's JSON
lines (pipeline.infra.logs), and every line logged while a job runs names the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import jobs
from pipeline.config import load_settings
from tests.lading.procs import lading_command, process_env, running
from tests.support import redis_server
from workers.app import create_app

pytestmark = pytest.mark.integration

REDIS = redis_server.url(16)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of `output` as JSON; fails naming the first line that is not."""
    entries = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}\n--- whole output ---\n{output}")
    return entries


def test_worker_and_job_lines_are_json_and_job_lines_name_the_job(tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS).flushdb()
    env = process_env(
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        REGISTRY_CELERY_BROKER_URL=REDIS,
        REGISTRY_CELERY_RESULT_BACKEND=REDIS,
    )
    hostname = f"logs-{uuid.uuid4().hex[:8]}@localhost"
    command = [*lading_command(), "worker", "--queues", "ingest", "--pool", "prefork", "--concurrency", "1"]
    app = create_app(load_settings(None, {"REGISTRY_CELERY_BROKER_URL": REDIS}))
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*command, "--hostname", hostname],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not app.control.ping(destination=[hostname], timeout=0.5):
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            # Committing an upload that does not exist: the job runs, answers BLOB_UPLOAD_UNKNOWN.
            kwargs = {
                "repository": "team/app",
                "upload_id": "none",
                "digest": "sha256:" + "0" * 64,
                "size": 1,
            }
            result = app.send_task(jobs.COMMIT_BLOB, kwargs=kwargs)
            # (an embedded worker test earlier in the session leaves Celery thinking it is in a task)
            assert result.get(timeout=60, disable_sync_subtasks=False)["ok"] is False
            while f"{result.id}] succeeded" not in stderr.read_text():  # logged just after the result
                assert time.monotonic() < deadline + 60, stderr.read_text()
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGTERM)  # the worker, as an init system would (not its pool)
            assert proc.wait(30) == 0
            app.close()
    output = stderr.read_text()
    entries = json_lines(output)
    assert {"time", "level", "logger", "msg"} <= set(entries[0])
    assert any(e["msg"] == f"{hostname} ready." for e in entries), output
    tagged = [e for e in entries if e.get("job_id") == result.id]
    assert any("succeeded" in e["msg"] for e in tagged), output  # Celery's own line about the job
    assert all(e["job"] == jobs.COMMIT_BLOB and e["repository"] == "team/app" for e in tagged)


def test_beat_lines_are_json(tmp_path: Path) -> None:
    broker = redis_server.url(17)
    client = redis.Redis.from_url(broker)
    client.flushdb()
    env = process_env(
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        REGISTRY_CELERY_BROKER_URL=broker,
        REGISTRY_LADING_MAINTENANCE_RECONCILE_INTERVAL="1",
    )
    with running([*lading_command(), "beat"], env, cwd=tmp_path) as proc:
        deadline = time.monotonic() + 60
        while not client.llen(jobs.MAINTENANCE):  # beat is up and has sent a reconcile job
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output
            time.sleep(0.05)
        proc.stop()
    client.flushdb()
    entries = json_lines(proc.output)
    assert any(e["logger"] == "celery.beat" for e in entries), proc.output
