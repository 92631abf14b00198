"""The settings every Lading process runs with — one shape for API, workers and CLI.

`pipeline.config` builds a `Settings` from a CNCF-distribution-style `config.yml` plus
`REGISTRY_*` environment overrides. Nothing reads configuration at import time: each
process loads it once and passes it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DeepVerification = Literal["off", "warn", "reject"]


@dataclass(frozen=True)
class UploadPurging:
    """distribution's storage.maintenance.uploadpurging (same defaults)."""

    enabled: bool = True
    age_seconds: float = 168 * 3600
    interval_seconds: float = 24 * 3600
    dryrun: bool = False


@dataclass(frozen=True)
class StorageSettings:
    driver: str = "filesystem"  # "filesystem" | "inmemory" | "s3" | "gcs" | "azure"
    root: str = "./lading-data"
    delete_enabled: bool = False
    redirect_disabled: bool = True
    upload_purging: UploadPurging = field(default_factory=UploadPurging)
    blob_cache: str = ""  # storage.cache.blobdescriptor: "" (none), "inmemory" or "redis"
    blob_cache_size: int = 10_000  # storage.cache.blobdescriptorsize (inmemory entries)
    # storage.s3.<key> of distribution's s3 driver, as s3_<key>
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_regionendpoint: str = ""  # "" → AWS; else an S3-compatible endpoint URL
    s3_accesskey: str = ""  # "" → boto3's default credential chain
    s3_secretkey: str = ""
    s3_rootdirectory: str = ""  # key prefix
    s3_forcepathstyle: bool = False
    s3_secure: bool = True
    s3_chunksize: int = 10 * 1024 * 1024  # multipart part size (at least 5 MiB)
    # storage.gcs.<key> of distribution's gcs driver, as gcs_<key>
    gcs_bucket: str = ""
    gcs_keyfile: str = ""  # service-account key file ("" → credentials, else google.auth's default)
    gcs_credentials: dict[str, Any] = field(default_factory=dict)  # service-account key as a map
    gcs_rootdirectory: str = ""
    gcs_chunksize: int = 16 * 1024 * 1024  # resumable upload chunk (a multiple of 256 KiB)
    gcs_endpoint: str = ""  # Lading's: an emulator's URL (API calls then go unauthenticated)
    # storage.azure.<key> of distribution's azure driver, as azure_<key>
    azure_accountname: str = ""
    azure_accountkey: str = ""
    azure_container: str = ""
    azure_realm: str = "core.windows.net"
    azure_serviceurl: str = ""  # "" → https://<accountname>.blob.<realm>; else e.g. Azurite's URL
    azure_rootdirectory: str = ""


@dataclass(frozen=True)
class TlsSettings:
    """distribution's `http.tls`: serve HTTPS with `certificate`/`key` (PEM files).

    `clientcas` (PEM files) turns on mutual TLS: with `clientauth` "require" a client must
    present a certificate issued by one of them ("verify-if-given": only checked when sent).
    `minimum_version` is "tls1.2" or "tls1.3"; `ciphersuites` are OpenSSL names of the
    TLS 1.2 suites allowed (empty: OpenSSL's defaults; TLS 1.3 suites are always on, as in Go).
    """

    certificate: str
    key: str
    clientcas: tuple[str, ...] = ()
    clientauth: Literal["require", "verify-if-given"] = "require"
    minimum_version: Literal["tls1.2", "tls1.3"] = "tls1.2"
    ciphersuites: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningSettings:
    """Signed job messages (`lading.signing`): workers run only jobs signed by a key whose
    certificate they trust, so whoever reaches the broker (Flower's send-task, a stray
    client) cannot make them commit a tag. `key` + `certificate` (PEM, RSA: Celery's auth
    serializer) on every process that sends jobs (API, beat, workers, whose retries are
    re-sent); `trusted`: certificate files or a glob workers accept (default: `certificate`).
    A process with the certificate but no key (Flower) can watch but not send."""

    key: str = ""
    certificate: str = ""
    trusted: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.certificate)


@dataclass(frozen=True)
class HttpSettings:
    addr: str = "127.0.0.1:5000"
    prefix: str = ""
    host: str = ""  # externally visible base URL, if behind a proxy
    metrics_enabled: bool = True
    metrics_path: str = "/metrics"
    metrics_addr: str = ""  # "" → served on the main port at metrics_path
    metrics_protected: bool | None = None  # None: protected when auth is configured
    health_path: str = "/healthz"
    keepalive_seconds: float = 30.0  # idle keep-alive of client connections (lading.http.keepalive)
    drain_timeout_seconds: float = 30.0  # graceful shutdown wait for in-flight requests (http.draintimeout)
    tls: TlsSettings | None = None  # http.tls; None → plain HTTP
    # Bounds on a request's head, checked before any parsing or auth (lading.http.*):
    max_header_bytes: int = 1024 * 1024  # request line + headers; Go's MaxHeaderBytes → 431
    max_headers: int = 100  # header fields per request (Apache's LimitRequestFields) → 431
    header_timeout_seconds: float = 30.0  # whole head must arrive in this time (Go's ReadHeaderTimeout)
    max_connections: int = 1000  # concurrent connections/requests; beyond → 503 (0 = no limit)


@dataclass(frozen=True)
class CelerySettings:
    """Lading's own `celery:` section. broker_url None → embedded in-process worker."""

    broker_url: str | None = None
    result_backend: str | None = None
    commit_timeout: float = 600.0  # bounded wait of a completing PUT
    manifest_timeout: float = 600.0
    embedded_concurrency: int = 4
    extra: dict[str, Any] = field(default_factory=dict)  # passed to app.conf verbatim

    @property
    def embedded(self) -> bool:
        return not self.broker_url


@dataclass(frozen=True)
class HtpasswdAuth:
    realm: str
    path: str


@dataclass(frozen=True)
class TokenAuth:
    realm: str
    service: str
    issuer: str
    rootcertbundle: str = ""
    jwks: str = ""
    # Built-in token endpoint (opt-in): issue tokens from htpasswd credentials + policy.
    builtin_htpasswd: str = ""
    builtin_signing_key: str = ""
    expiration_seconds: int = 300
    builtin_path: str = "/auth/token"  # where api mounts the built-in endpoint (without http.prefix)
    # true: a refresh token works once. Off by default: the docker CLI reuses the identity
    # token `docker login` stored and never keeps the rotated one, so rotation breaks it.
    rotate_refresh: bool = False


@dataclass(frozen=True)
class AuthSettings:
    htpasswd: HtpasswdAuth | None = None
    token: TokenAuth | None = None
    policy_path: str = ""  # access policy file; "" → authenticated users may do anything
    anonymous_pull: bool = False
    # Failed logins per window before 429 (lading.auth.throttle): per (user, client address)
    # pair, and per client address whatever the user names.
    login_failures_per_user_address: int = 10
    login_failures_per_address: int = 100
    login_failure_window_seconds: float = 900.0


@dataclass(frozen=True)
class NotificationEndpoint:
    name: str
    url: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    timeout_seconds: float = 1.0
    threshold: int = 10
    backoff_seconds: float = 1.0
    ignored_mediatypes: tuple[str, ...] = ()
    ignored_actions: tuple[str, ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class MaintenanceSettings:
    scrub_enabled: bool = True
    scrub_interval_seconds: float = 24 * 3600
    scrub_rate_bytes: int = 64 * 1024 * 1024  # per second; 0 = unlimited
    scrub_quarantine: bool = True
    gc_enabled: bool = False
    gc_interval_seconds: float = 24 * 3600
    gc_grace_seconds: float = 3600.0
    gc_remove_untagged: bool = False
    reconcile_interval_seconds: float = 300.0
    beat_schedule_path: str = ""  # lading.beat.schedule; "" → under the data directory


@dataclass(frozen=True)
class Upstream:
    """One registry Lading mirrors (pull-through cache), under a repository prefix.

    `prefix` "" mirrors the whole registry (distribution's `proxy:` section); otherwise
    repository `<prefix>/<path>` is `<path>` on `remoteurl`. `ttl_seconds` is
    distribution's `proxy.ttl`: cached content unused for that long expires (0: never).
    `tag_ttl_seconds` is the freshness window of a tag: within it a pull by tag asks the
    upstream nothing. `platforms` ("linux/amd64", ...) are the children of an index the
    background warming fetches (empty: none, only what clients pull)."""

    prefix: str
    remoteurl: str
    username: str = ""
    password: str = ""
    ttl_seconds: float = 168 * 3600
    tag_ttl_seconds: float = 300.0
    platforms: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The name metrics and logs use for this upstream."""
        return self.prefix or "_"


@dataclass(frozen=True)
class ProxySettings:
    """Pull-through caches. `local` allows repositories outside every prefix (plain local
    repositories); with a whole-registry mirror (prefix "") there are none."""

    upstreams: tuple[Upstream, ...] = ()
    local: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.upstreams)


@dataclass(frozen=True)
class Settings:
    version: str = "0.1"
    log_level: str = "info"
    storage: StorageSettings = field(default_factory=StorageSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    notifications: tuple[NotificationEndpoint, ...] = ()
    deep_verification: DeepVerification = "off"
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    warnings: tuple[str, ...] = ()  # unsupported keys seen while loading

    @property
    def metrics_protected(self) -> bool:
        """Does /metrics on the main port need credentials? `lading.metrics.protected` if
        set, else yes whenever an access controller is configured."""
        if self.http.metrics_protected is not None:
            return self.http.metrics_protected
        return self.auth.htpasswd is not None or self.auth.token is not None
