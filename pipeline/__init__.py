"""Lading's domain core: storage, layout, digests, stores and the use cases jobs run.

Nothing in this package imports HTTP frameworks, Celery or kombu; `api` and `workers`
both build on it (see DESIGN.md and the import contracts in pyproject.toml).

The map, top to bottom; a module may import only from the rows below its own (the
`layers` contract in pyproject.toml enforces it, and every new module must be given a row):

    handlers.py          job name -> use case, and the job envelope around its outcome
    proxy/               use case: pull-through cache of upstream registries
    maintenance/         use cases: scrub, purge uploads, gc, reconcile, stats
    manifest_commit.py   use case: commit or delete a manifest (tags, referrers, links)
    blob_commit.py       use case: finish an upload into a blob; hash an upload ahead
    deepverify.py        use case: do an image's layers hold what its config says
    events.py            use case: registry notifications to webhook endpoints
    registry.py          build_registry: one registry's stores over one storage driver
    stores/              typed records: blobs, uploads, manifests, tags, referrers, catalog,
                         pending commits, blob descriptor cache, dead letters, digest dirs
    auth/                access policy, login throttling, token records
    storage/             drivers (filesystem, memory, s3, gcs, azure; checked wrapper) and
                         paths.py, the on-disk layout every store writes through
    infra/               where locks live (coordination), lock backends, JSON logs
    config/              settings.py: the Settings dataclasses every process runs with;
                         units, schema, environment, build: load_settings from config.yml
                         + REGISTRY_* (the composition root loads; nothing in pipeline
                         does); tls: distribution's `http.tls` as an ssl.SSLContext
    formats/             digests, names, manifest documents, tarsum, resumable hash state
    jobs.py              job names, queues, payloads, envelope: the api <-> workers contract
    errors.py            the one tree of domain errors and their wire form

Use cases sit at the top level (or in their own package when they are several modules);
what they stand on lives in the subpackages.
"""

__version__ = "0.1.0"
