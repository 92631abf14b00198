"""Lading's domain core: storage, layout, digests, stores and the use cases jobs run.

Nothing in this package imports HTTP frameworks, Celery or kombu; `api` and `workers`
both build on it (see DESIGN.md and the import contract in pyproject.toml).
"""

__version__ = "0.1.0"
