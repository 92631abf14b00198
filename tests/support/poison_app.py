"""A worker app with one extra job that SIGKILLs the process running it (a poison job),
registered with the production delivery policy and guard (tests only):

    LADING_CONFIG=... celery -A tests.support.poison_app worker -P prefork -Q verify
"""

from __future__ import annotations

import os
import signal
from typing import Any

from pipeline import jobs
from workers.main import build_app
from workers.tasks import POLICIES, guard_of, register_job

POISON = "lading.test.poison"


def _die(kwargs: dict[str, Any]) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


app = build_app()
register_job(app, POISON, POLICIES[jobs.COMMIT_MANIFEST], _die, guard_of(app))
