"""Background maintenance of a registry's storage, run as jobs on the maintenance queue
(and by the `lading` CLI): scrub (re-hash and quarantine), purge_uploads (abandoned upload
sessions), garbage_collect (online mark and sweep) and reconcile (work lost with the broker).

Each entry point is a plain function `(registry, ..., progress=None) -> dict` returning a
JSON-serialisable summary; `progress(done, total_or_None)` feeds a CLI progress bar. Each
takes its own registry lock without waiting, so a duplicate trigger answers
{"skipped": ...} instead of running twice. Scrub and gc add each finished run's counts to a
record in storage (pipeline.maintenance.stats), which the API's /metrics reads.
"""

from pipeline.maintenance.gc import garbage_collect
from pipeline.maintenance.purge import purge_uploads
from pipeline.maintenance.reconcile import reconcile
from pipeline.maintenance.scrub import scrub

__all__ = ["garbage_collect", "purge_uploads", "reconcile", "scrub"]
