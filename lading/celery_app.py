"""A module-level Celery app built from the configuration, for Celery's own command line.

`celery -A lading.celery_app flower` (and `celery -A lading.celery_app worker|inspect|…`)
need an importable app object. It is built from `$LADING_CONFIG` (a distribution-style
config.yml; defaults if unset) with `REGISTRY_*` environment overrides, exactly as
`lading worker` builds its own (lading.composition, kind "worker"), so Flower sees the
same broker and queues as the workers.
"""

from __future__ import annotations

import os

from celery import Celery

from lading.composition import compose
from pipeline.config import load_settings

settings = load_settings(os.environ.get("LADING_CONFIG") or None, os.environ)
_worker = compose(settings, "worker").celery
assert _worker is not None
app: Celery = _worker
