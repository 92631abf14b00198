"""The Celery app of a worker or beat process started by the `celery` command:

    LADING_CONFIG=/etc/lading/config.yml celery -A workers.main worker -Q ingest,verify
    LADING_CONFIG=/etc/lading/config.yml celery -A workers.main beat

`app` is built on first access (not at import) from the YAML file named by `LADING_CONFIG`
(defaults if unset) plus the `REGISTRY_*` environment overrides (`pipeline.config`).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from pipeline.config import load_settings
from workers.app import create_app

_app: Celery | None = None


def build_app() -> Celery:
    global _app
    if _app is None:
        _app = create_app(load_settings(os.environ.get("LADING_CONFIG") or None, os.environ))
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
