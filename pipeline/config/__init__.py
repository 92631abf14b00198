"""Loading `Settings` from a CNCF-distribution-style `config.yml` plus `REGISTRY_*` overrides.

A `config.yml` written for distribution loads unchanged: every key Lading supports means
what it means there, every distribution key Lading does not support is named in
`Settings.warnings` (and logged at start) instead of failing. A value of the wrong type,
an unknown storage driver or a missing required key is a `ConfigurationError` naming the
key, because running with a different meaning than the operator wrote is worse than not
starting.

Lading's own keys live in two extra sections:

```yaml
celery:                       # no broker_url → embedded in-process worker
  broker_url: redis://127.0.0.1:6379/0
  result_backend: redis://127.0.0.1:6379/1
  commit_timeout: 10m         # Go duration or a number of seconds
  manifest_timeout: 600
  embedded_concurrency: 4
  worker_prefetch_multiplier: 1   # any other key → app.conf verbatim (CelerySettings.extra)
lading:
  deep_verification: off      # off | warn | reject
  maintenance:
    scrub: {enabled: true, interval: 24h, rate: 64MiB, quarantine: true}
    gc: {enabled: false, interval: 24h, grace: 1h, remove_untagged: false}
    reconcile: {interval: 5m}
  auth:
    policy: /etc/lading/policy.yml
    anonymous_pull: false
    throttle: {user_address: 10, address: 100, window: 15m}   # failed logins, then 429
    token:                    # built-in token endpoint (needs auth.token realm/service/issuer)
      htpasswd: /etc/lading/htpasswd
      signing_key: /etc/lading/token.pem
      expiration: 5m
      path: /auth/token
      rotate_refresh: false   # true: a refresh token works once (breaks the docker CLI)
  beat: {schedule: /var/lib/lading/beat/schedule}   # beat's state (default: <rootdirectory>/lading-beat/)
  http:
    keepalive: 30s            # idle keep-alive of client connections
    maxheaderbytes: 1MiB      # request line + headers, else 431 (Go's MaxHeaderBytes)
    maxheaders: 100           # header fields per request, else 431
    headertimeout: 30s        # a request head must arrive within this (slowloris)
    maxconnections: 1000      # concurrent connections; beyond → 503 (0: unlimited)
  signing:                    # signed job messages: workers refuse unsigned jobs (Flower's send-task)
    key: /etc/lading/signing/key.pem          # RSA; on the API, beat and workers, never Flower
    certificate: /etc/lading/signing/cert.pem # `lading signing-key DIR` makes both
  metrics: {protected: true}    # default: true with auth (a named user, or a token granting something)
  health: {path: /healthz}
```

distribution's `storage.cache.blobdescriptor` (`inmemory` or `redis`) caches blob sizes and
repository links for blob HEAD/GET (pipeline.stores.blobcache). With a broker both values mean the
cache shared in the deployment's Redis; `blobdescriptorsize` bounds the in-memory one.

distribution's `http.tls` (certificate, key, clientcas, clientauth, minimumtls tls1.2/tls1.3,
ciphersuites) is honoured; any other TLS key (letsencrypt) or value Lading cannot honour is
an error, never a plain-HTTP fallback.

Environment variables follow distribution's convention: `REGISTRY_` then the key path with
`_` for each level (`REGISTRY_STORAGE_DELETE_ENABLED=true`, `REGISTRY_CELERY_BROKER_URL=…`,
`REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL=…`). Keys that themselves contain `_` (Lading's
`broker_url`) resolve because the path is matched against the known keys, longest first.
`REGISTRY_STORAGE=<driver>` swaps the storage driver (dropping the other driver's options).
Durations in distribution's sections are Go durations ("168h", "10m30s"); Lading's own
sections also accept a plain number of seconds.

The package, bottom to top (the import contracts keep it acyclic):

- `settings`: the `Settings` dataclasses every process runs with (no imports of its own).
- `units`: durations, sizes, booleans and addresses as a configuration spells them.
- `tls`: `http.tls` as an `ssl.SSLContext`; its Go cipher-suite names, checked at load time.
- `schema`: `SCHEMA`, unimplemented and ignored sections, `misspelling_of`, the checker.
- `environment`: `REGISTRY_*` overrides applied to the raw tree.
- `build`: `load_settings` and the builder of each section.

Inside `pipeline`, modules import `pipeline.config.settings` (the dataclasses) only; loading
configuration is the composition root's job (`lading.composition`), and the listener's TLS
context the server's (`lading.server` uses `tls.server_context`).
"""

from pipeline.config.build import (
    load_settings,
)
from pipeline.config.schema import (
    CELERY_SECTION_KEYS,
    UNIMPLEMENTED,
    misspelling_of,
)
from pipeline.config.settings import (
    AuthSettings,
    CelerySettings,
    DeepVerification,
    HtpasswdAuth,
    HttpSettings,
    MaintenanceSettings,
    NotificationEndpoint,
    ProxySettings,
    Settings,
    SigningSettings,
    StorageSettings,
    TlsSettings,
    TokenAuth,
    UploadPurging,
    Upstream,
)
from pipeline.config.units import (
    parse_addr,
    parse_bool,
    parse_duration,
    parse_size,
)

__all__ = [
    "CELERY_SECTION_KEYS",
    "UNIMPLEMENTED",
    "AuthSettings",
    "CelerySettings",
    "DeepVerification",
    "HtpasswdAuth",
    "HttpSettings",
    "MaintenanceSettings",
    "NotificationEndpoint",
    "ProxySettings",
    "Settings",
    "SigningSettings",
    "StorageSettings",
    "TlsSettings",
    "TokenAuth",
    "UploadPurging",
    "Upstream",
    "load_settings",
    "misspelling_of",
    "parse_addr",
    "parse_bool",
    "parse_duration",
    "parse_size",
]
