"""Formats: pure values and parsers of what the distribution spec puts on the wire.

Digests, repository names and references, manifest and index documents, tarsum and the
resumable hash state. Nothing here touches storage, Redis or another pipeline package
except `pipeline.errors`.
"""
