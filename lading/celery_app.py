"""A module-level Celery app built from the configuration, for Celery's own command line.

`celery -A lading.celery_app flower` (and `celery -A lading.celery_app worker|inspect|…`)
need an importable app object. It is built from `$LADING_CONFIG` (a distribution-style
config.yml; defaults if unset) with `REGISTRY_*` environment overrides, exactly as the
`lading` commands build theirs, so Flower sees the same broker and queues as the workers.
"""

from __future__ import annotations

import os

from pipeline.config import load_settings
from workers.app import create_app

settings = load_settings(os.environ.get("LADING_CONFIG") or None, os.environ)
app = create_app(settings)
