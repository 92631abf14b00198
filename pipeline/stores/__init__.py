"""Stores: typed records kept on the registry's storage (and, for a few, in Redis).

Blobs and upload sessions, manifests, tags, referrers, the catalog, batch-mode pending-commit
records, the blob descriptor cache, dead-lettered jobs and digest directory listings. Each
store reads and writes through a storage driver at the paths `pipeline.storage.paths` names;
none of them imports a use case, `pipeline.handlers`, maintenance or proxy.
"""
