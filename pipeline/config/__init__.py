"""Loading `Settings` from a CNCF-distribution-style `config.yml` plus `REGISTRY_*` overrides:
`build` loads and checks, `settings` holds the dataclasses every process runs with."""

from pipeline.config.build import (
    CELERY_SECTION_KEYS,
    UNIMPLEMENTED,
    load_settings,
    misspelling_of,
    parse_addr,
    parse_duration,
    parse_size,
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
    "parse_duration",
    "parse_size",
]
