"""The composition root: who builds what, for every kind of Lading process.

`compose(settings, kind)` is the one function that turns `Settings` (config.yml with the
`REGISTRY_*` environment on top, pipeline.config) into the objects a process runs with:

```
Settings ──▶ pipeline.infra.coordination.coordination_for ──▶ Coordination (where locks and
   │              results live: Redis of the broker / result backend, or in-process;
   │              ConfigurationError for a scaled-out configuration with no Redis)
   ▼
pipeline.registry.build_registry(settings, coordination)
   = storage driver (settings.storage) + stores + pending-commit records + locks
   │
   ├─ "api"     lading serve: Registry, Celery app (send-only; in embedded mode it also
   │            runs the jobs on the API's Registry), Metrics (settings.http), the job
   │            client (CeleryJobClient counted by api.metrics.InstrumentedJobs; embedded:
   │            with workers.direct.DirectJobs, first attempts without the broker), Access
   │            (settings.auth), Notifier (settings.notifications)
   ├─ "worker"  lading worker / celery -A lading.celery_app: Celery app whose tasks build
   │            their Registry with build_registry on the first job of each (forked)
   │            process, so no connection crosses a fork
   ├─ "beat"    lading beat: Celery app (schedule from settings.lading.maintenance); beat
   │            sends jobs, it never touches storage
   └─ "cli"     lading gc / scrub / purge-uploads: Registry (same locks as the workers, so
                a CLI run and a scheduled run of the same job exclude each other)
```

Layering: `workers/` may not import `lading/`, and a worker process started by Celery's
own command line has no composition root of its own, so the part every process shares,
`build_registry`, lives in `pipeline/` (workers/tasks.py `RegistryHolder` calls it when no
factory is given); this module composes everything else. lading.embedded wraps the "api"
composition into the ASGI app `lading serve` runs (request log, metrics, health).
Nothing but this module and build_registry builds a `Registry` outside tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import Settings
from pipeline.infra.coordination import Coordination, coordination_for
from pipeline.registry import Registry, build_registry

if TYPE_CHECKING:
    from celery import Celery

    from api.auth import Access
    from api.metrics import InstrumentedJobs, Metrics
    from api.notify import Notifier
    from workers.direct import DirectJobs

__all__ = ["Composition", "ProcessKind", "compose"]

ProcessKind = Literal["api", "worker", "beat", "cli"]


@dataclass
class Composition:
    """What one process runs with (fields a kind does not need are None)."""

    kind: ProcessKind
    settings: Settings
    coordination: Coordination
    registry: Registry | None = None
    celery: Celery | None = None
    jobs: InstrumentedJobs | None = None
    metrics: Metrics | None = None
    access: Access | None = None
    notifier: Notifier | None = None
    direct: DirectJobs | None = None  # embedded "api": runs jobs without the broker


def compose(settings: Settings, kind: ProcessKind) -> Composition:
    """Build everything a process of `kind` needs from `settings` (see the module)."""
    coordination = coordination_for(settings)
    if kind == "cli":
        return Composition(kind, settings, coordination, registry=build_registry(settings, coordination))
    if kind in ("worker", "beat"):
        from workers.app import create_app as create_celery

        def registry_factory() -> Registry:
            return build_registry(settings, coordination)

        celery = create_celery(settings, registry_factory=registry_factory)
        return Composition(kind, settings, coordination, celery=celery)
    if kind != "api":
        raise ValueError(f"unknown process kind {kind!r}")
    return _api(settings, coordination)


def _api(settings: Settings, coordination: Coordination) -> Composition:
    from api.auth import Access
    from api.jobclient import CeleryJobClient
    from api.metrics import InstrumentedJobs, Metrics
    from api.notify import Notifier
    from pipeline.auth.throttle import failure_counters_for
    from pipeline.auth.tokenrecords import token_records_for
    from workers.app import create_app as create_celery
    from workers.direct import DirectJobs

    registry = build_registry(settings, coordination)
    # Embedded: the in-process worker runs the jobs on this very Registry (an in-memory
    # driver has no other copy). Scaled: the app only sends; workers build their own.
    shared: Any = registry if coordination.embedded else None
    celery = create_celery(settings, registry=shared)
    metrics = Metrics(driver=registry.driver)
    # Embedded: a job's first attempt runs on the API's own threads, not through the
    # in-memory broker (workers.direct); retries and beat's jobs still use the broker.
    direct = DirectJobs(celery, settings.celery.embedded_concurrency) if coordination.embedded else None
    jobs = InstrumentedJobs(CeleryJobClient(celery, direct=direct), metrics)
    return Composition(
        "api",
        settings,
        coordination,
        registry=registry,
        celery=celery,
        jobs=jobs,
        metrics=metrics,
        access=Access.from_settings(
            settings,
            token_records=token_records_for(coordination),
            failure_counters=failure_counters_for(coordination),
        ),
        notifier=Notifier(settings, jobs),
        direct=direct,
    )
