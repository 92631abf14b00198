"""Celery side of Lading: the app factory, queues and routes, one thin task per job."""
