"""`lading jobs dead|retry|drop`: the jobs set aside after their process died too often
(pipeline.stores.deadletter), for an operator to look at, send again or forget."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from typing import Any

from pipeline.config import Settings
from pipeline.stores.deadletter import DeadLetters


def letters_for(settings: Settings) -> DeadLetters:
    """The deployment's dead letters; raises ValueError without a Redis (embedded mode)."""
    from pipeline.infra.coordination import coordination_for

    target = coordination_for(settings).redis
    if target is None:
        raise ValueError("`lading jobs` needs the deployment's Redis (celery.broker_url or result_backend)")
    return DeadLetters(target.client())


def dead(letters: DeadLetters, as_json: bool) -> str:
    parked = letters.list()
    if as_json:
        return json.dumps([job.summary() for job in parked], indent=2, sort_keys=True)
    if not parked:
        return "no dead jobs"
    lines = []
    for job in parked:
        when = datetime.datetime.fromtimestamp(job.parked_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        lines.append(f"{job.job_id}  {job.name}  deliveries={job.deliveries}  parked={when}")
        lines.append(f"    last error: {job.last_error}")
        lines.append(f"    arguments: {json.dumps(job.summary()['kwargs'], sort_keys=True)}")
    return "\n".join(lines)


def retry(letters: DeadLetters, job_id: str, send: Callable[[str, dict[str, Any], str], str]) -> str:
    """Send the parked job again to its queue (a new id, fresh delivery counts) and forget
    the record."""
    job = letters.get(job_id)
    if job is None:
        raise KeyError(job_id)
    new_id = send(job.name, job.kwargs, job.queue)
    letters.remove(job_id)
    return new_id


def drop(letters: DeadLetters, job_id: str) -> None:
    if letters.remove(job_id) is None:
        raise KeyError(job_id)


def add_parser(
    sub: Any, add_config: Callable[[argparse.ArgumentParser], None], run: Callable[..., int]
) -> None:
    p = sub.add_parser(
        "jobs",
        help="list, retry or drop jobs set aside after failing repeatedly",
        description="Jobs whose process died on each of their deliveries are set aside (not run "
        "again) once they were delivered too often; these commands show them and send or drop them.",
    )
    actions = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    q = actions.add_parser("dead", help="list the jobs set aside", description="List the jobs set aside.")
    q.add_argument("--json", action="store_true", help="print the records as JSON")
    add_config(q)
    q.set_defaults(run=run)
    for name, text in (("retry", "send a job set aside again"), ("drop", "forget a job set aside")):
        q = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        q.add_argument("job_id", metavar="ID")
        add_config(q)
        q.set_defaults(run=run)
