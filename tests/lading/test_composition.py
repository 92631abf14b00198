"""lading.composition: every process kind gets its parts from one function, and every one
of a scaled-out deployment shares its locks through Redis."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lading.cli import main
from lading.composition import compose
from pipeline.config import CelerySettings, Settings, StorageSettings, load_settings
from pipeline.errors import ConfigurationError
from pipeline.infra.locks import FileLocks, RedisLocks
from tests.lading.procs import lading_command, process_env
from tests.support import redis_server
from workers.direct import DirectJobs


def scaled(root: Path, broker: str, backend: str | None = None) -> Settings:
    return Settings(
        storage=StorageSettings(driver="filesystem", root=str(root)),
        celery=CelerySettings(broker_url=broker, result_backend=backend),
    )


def test_every_process_kind_of_a_redis_deployment_uses_redis_locks(tmp_path: Path) -> None:
    settings = scaled(tmp_path, redis_server.url(13))
    cli = compose(settings, "cli")
    assert cli.registry is not None and isinstance(cli.registry.locks, RedisLocks)
    api = compose(settings, "api")
    assert api.registry is not None and isinstance(api.registry.locks, RedisLocks)
    assert api.jobs is not None and api.notifier is not None and api.metrics is not None
    assert api.direct is None  # scaled: every job goes to the broker
    worker = compose(settings, "worker")
    # A worker builds its Registry per process on its first job (after a prefork fork);
    # tests/lading/test_cross_process.py shows its locks are the ones the CLI and API see.
    assert worker.celery is not None and worker.registry is None


def test_embedded_api_shares_its_registry_with_the_in_process_worker(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(driver="filesystem", root=str(tmp_path)))
    api = compose(settings, "api")
    assert api.coordination.embedded
    assert api.registry is not None and isinstance(api.registry.locks, FileLocks)
    assert api.celery is not None and api.registry.locks.directory == str(tmp_path / ".lading-locks")
    # Jobs run on the API's threads first (workers.direct), through the same app's tasks.
    assert isinstance(api.direct, DirectJobs) and api.jobs is not None
    assert api.jobs.inner._direct is api.direct


def test_lading_gc_beside_an_embedded_server_shares_its_locks(tmp_path: Path) -> None:
    """The two-command set-up: `lading serve` (embedded, filesystem storage) and a
    `lading gc` process run from a shell beside it take the same locks."""
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n")
    server = compose(load_settings(str(config), {}), "api")  # what `lading serve` builds
    assert server.registry is not None
    with server.registry.locks.lock("_gc"):  # as while its scheduled gc runs
        run = subprocess.run(
            [*lading_command(), "gc", str(config), "--json"],
            env=process_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout) == {"skipped": "another garbage collection is running"}
    again = subprocess.run(
        [*lading_command(), "gc", str(config), "--json"], env=process_env(), capture_output=True, timeout=120
    )
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("kind", ["api", "worker", "beat", "cli"])
def test_no_process_starts_without_a_shared_place_for_locks(tmp_path: Path, kind: str) -> None:
    settings = scaled(tmp_path, "amqp://guest:guest@127.0.0.1:5672//", "rpc://")
    with pytest.raises(ConfigurationError, match="REGISTRY_CELERY_RESULT_BACKEND"):
        compose(settings, kind)  # type: ignore[arg-type]


def test_lading_gc_refuses_a_deployment_without_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "celery:\n  broker_url: amqp://guest:guest@127.0.0.1:5672//\n  result_backend: rpc://\n"
    )
    for name in list(__import__("os").environ):
        if name.startswith("REGISTRY_"):
            monkeypatch.delenv(name)
    assert main(["gc", str(config)]) == 1
    err = capsys.readouterr().err
    assert "celery.result_backend" in err and "REGISTRY_CELERY_RESULT_BACKEND" in err
