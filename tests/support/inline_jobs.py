"""`InlineJobClient`: the API tests' job client, a test double running
`pipeline.handlers.run_job` in threads of the test process (no broker, no retries). The
server always uses api.jobclient.CeleryJobClient."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from api.jobclient import _exception_parts, job_error
from api.request_id import note_job
from pipeline import jobs
from pipeline.errors import JobTimeout, LadingError
from pipeline.handlers import run_job
from pipeline.registry import Registry


class InlineJobClient:
    """`pipeline.jobs.JobClient` running jobs in this process's threads (API tests only).

    kwargs go through JSON like they would through Celery; StorageUnavailable is not
    retried; waiting on an unknown job id raises JobTimeout at once."""

    def __init__(self, registry: Registry, max_workers: int = 8) -> None:
        self._registry = registry
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lading-inline-job")
        self._pending: dict[str, ThreadFuture[dict[str, Any]]] = {}

    def send(self, job: str, **kwargs: Any) -> str:
        if job not in jobs.ROUTES:
            raise ValueError(f"unknown job {job!r}")
        payload = json.loads(json.dumps(kwargs))
        job_id = str(uuid.uuid4())
        note_job(job_id)  # listed in the request's access-log line (api.request_id)
        self._pending[job_id] = self._executor.submit(run_job, self._registry, job, payload)
        return job_id

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        future = self._pending.get(job_id)
        if future is None:
            raise JobTimeout({"job_id": job_id, "timeout": timeout})
        try:
            envelope = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError:
            raise JobTimeout({"job_id": job_id, "timeout": timeout}) from None
        except LadingError:
            raise
        except Exception as exc:
            raise job_error(job_id, *_exception_parts(exc)) from exc
        finally:
            if future.done():
                self._pending.pop(job_id, None)
        return jobs.unwrap(envelope)

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        return await self.wait(self.send(job, **kwargs), timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
