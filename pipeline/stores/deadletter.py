"""Poison jobs: a cap on how often one job is delivered, counted across processes, and the
dead-letter records an operator sees.

A late-acknowledged job whose process dies is delivered again (`reject_on_worker_lost`,
or the lease of a worker killed whole). A job that kills its process every time would run
forever. So each redelivery of a job is counted in Redis, per job id and retry attempt
(a retry after a transient error is a new attempt, not a redelivery; a first delivery is
not counted, workers.tasks.DeliveryGuard), and the start past `MAX_DELIVERIES` does not
run it: the job is parked — a record with its name, arguments,
count and last known error in the `lading:jobs:dead` hash — and answers its waiting
client with JobFailed. `lading jobs dead [--json]` lists the records, `lading jobs retry
ID` sends the job again (fresh counts), `lading jobs drop ID` forgets it; `/metrics`
shows how many there are (`lading_jobs_dead`).

Plain redis-py on the deployment's coordination Redis (pipeline.infra.coordination): no Celery.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

MAX_DELIVERIES = 5
COUNT_PREFIX = "lading:job:deliveries:"
DEAD_KEY = "lading:jobs:dead"
COUNT_TTL = 2 * 24 * 3600  # seconds a delivery count is kept after the job's last start


@dataclass(frozen=True)
class DeadJob:
    job_id: str
    name: str
    kwargs: dict[str, Any]
    deliveries: int
    last_error: str
    parked_at: float
    queue: str = ""  # where it was delivered from (`lading jobs retry` sends it there)

    def summary(self) -> dict[str, Any]:
        """The record without its arguments' long values (what `lading jobs dead` shows)."""
        shown = {
            key: (value[:60] + "...") if isinstance(value, str) and len(value) > 60 else value
            for key, value in self.kwargs.items()
        }
        return {**asdict(self), "kwargs": shown}


class DeadLetters:
    """Delivery counts and parked jobs in one Redis."""

    def __init__(self, client: redis.Redis, max_deliveries: int = MAX_DELIVERIES) -> None:
        self.client = client
        self.max_deliveries = max_deliveries

    def started(self, job_id: str, attempt: int, where: str = "") -> int:
        """Count one start of attempt `attempt` of `job_id`; returns how many so far.
        `where` (the worker's name) is kept as the last place it started."""
        return self.start(job_id, attempt, where)[0]

    def start(self, job_id: str, attempt: int, where: str = "") -> tuple[int, str]:
        """`started`, also returning where the previous start was ("" for the first), in
        one round trip with no MULTI/EXEC: every late-acknowledged job pays this, and each
        command is atomic on its own (HINCRBY counts exactly; the EXPIRE only bounds the
        key's life)."""
        key = f"{COUNT_PREFIX}{job_id}:{attempt}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(key, "where")
        pipe.hincrby(key, "count", 1)
        pipe.hset(key, "where", where)
        pipe.expire(key, COUNT_TTL)
        previous, count, _, _ = pipe.execute()
        text = previous.decode() if isinstance(previous, bytes) else str(previous or "")
        return int(count), text

    def last_start(self, job_id: str, attempt: int) -> str:
        raw = self.client.hget(f"{COUNT_PREFIX}{job_id}:{attempt}", "where")
        return raw.decode() if isinstance(raw, bytes) else str(raw or "")

    def park(
        self,
        job_id: str,
        name: str,
        kwargs: dict[str, Any],
        deliveries: int,
        last_error: str,
        queue: str = "",
    ) -> DeadJob:
        job = DeadJob(job_id, name, dict(kwargs), deliveries, last_error, time.time(), queue)
        self.client.hset(DEAD_KEY, job_id, json.dumps(asdict(job)))
        return job

    def get(self, job_id: str) -> DeadJob | None:
        raw = self.client.hget(DEAD_KEY, job_id)
        return _load(raw) if raw is not None else None

    def list(self) -> list[DeadJob]:
        jobs = [_load(raw) for raw in self.client.hvals(DEAD_KEY)]
        return sorted((job for job in jobs if job is not None), key=lambda job: job.parked_at)

    def remove(self, job_id: str) -> DeadJob | None:
        """Forget a parked job; returns its record (None if there was none)."""
        job = self.get(job_id)
        if job is not None:
            self.client.hdel(DEAD_KEY, job_id)
        return job

    def count(self) -> int:
        return int(self.client.hlen(DEAD_KEY))


def _load(raw: Any) -> DeadJob | None:
    try:
        data = json.loads(raw)
        return DeadJob(
            job_id=str(data["job_id"]),
            name=str(data["name"]),
            kwargs=dict(data.get("kwargs") or {}),
            deliveries=int(data.get("deliveries") or 0),
            last_error=str(data.get("last_error") or ""),
            parked_at=float(data.get("parked_at") or 0.0),
            queue=str(data.get("queue") or ""),
        )
    except (TypeError, ValueError, KeyError):
        return None
