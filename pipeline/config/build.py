"""`load_settings`: a `config.yml` plus `REGISTRY_*` overrides, checked against the schema,
built into `Settings` one section at a time (each section builder names the key it refuses)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from pipeline.config.environment import apply_env
from pipeline.config.schema import DRIVER_KEYS, SCHEMA, Checker
from pipeline.config.settings import (
    AuthSettings,
    CelerySettings,
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
from pipeline.config.tls import TLS_VERSIONS, openssl_ciphers
from pipeline.config.units import parse_addr
from pipeline.errors import ConfigurationError

__all__ = [
    "load_settings",
]


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the YAML file at `path` (defaults if None) with `environ`'s
    `REGISTRY_*` overrides on top (os.environ if None).

    Raises ConfigurationError naming the key for a value Lading cannot run with.
    """
    env = os.environ if environ is None else environ
    tree = _read_yaml(path) if path else {}
    warnings: list[str] = []
    from_env = apply_env(tree, env, warnings)
    checker = Checker(from_env)
    typed = checker.section(SCHEMA, tree, ())
    warnings.extend(checker.warnings)
    settings = _build(typed, warnings)
    return dataclasses.replace(settings, warnings=tuple(warnings))


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"configuration file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"configuration file {path} must hold a mapping at the top level")
    return data


def _get(tree: Mapping[str, Any], *keys: str) -> Any:
    node: Any = tree
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _pick(**values: Any) -> dict[str, Any]:
    """Keyword arguments without the ones the configuration left unset."""
    return {k: v for k, v in values.items() if v is not None}


_LOG_LEVELS = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "fatal": "critical",
    "panic": "critical",
}


def _build(t: Mapping[str, Any], warnings: list[str]) -> Settings:
    return Settings(
        **_pick(
            version=_version(t.get("version")),
            log_level=_log_level(t, warnings),
            deep_verification=_choice(
                _get(t, "lading", "deep_verification"), ("off", "warn", "reject"), "lading.deep_verification"
            ),
        ),
        storage=_storage(t.get("storage") or {}),
        http=_http(t),
        celery=_celery(t.get("celery") or {}),
        auth=_auth(t),
        notifications=tuple(
            _endpoint(e, i) for i, e in enumerate(_get(t, "notifications", "endpoints") or [])
        ),
        maintenance=_maintenance(
            _get(t, "lading", "maintenance") or {}, _get(t, "lading", "beat", "schedule")
        ),
        proxy=_proxy(t),
        signing=_signing(_get(t, "lading", "signing") or {}),
    )


def _signing(sg: Mapping[str, Any]) -> SigningSettings:
    if (sg.get("key") or sg.get("trusted")) and not sg.get("certificate"):
        raise ConfigurationError("lading.signing.certificate: required with lading.signing.key or trusted")
    return SigningSettings(
        **_pick(key=sg.get("key"), certificate=sg.get("certificate"), trusted=sg.get("trusted"))
    )


def _version(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if text not in ("0.1", "0.1.0"):
        raise ConfigurationError(f"version: unsupported configuration version {value!r} (use 0.1)")
    return "0.1"


def _log_level(t: Mapping[str, Any], warnings: list[str]) -> str | None:
    level = _get(t, "log", "level")
    if level is None and t.get("loglevel") is not None:
        warnings.append("loglevel: deprecated, use log.level")
        level = t["loglevel"]
    if level is None:
        return None
    key = "log.level" if _get(t, "log", "level") is not None else "loglevel"
    mapped = _LOG_LEVELS.get(str(level).lower())
    if mapped is None:
        raise ConfigurationError(f"{key}: unknown level {level!r} (error, warn, info or debug)")
    return mapped


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> str | None:
    if value is None:
        return None
    if value is False:  # YAML 1.1 reads a bare `off` as false
        value = "off"
    if value not in allowed:
        raise ConfigurationError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


_BLOB_CACHES = ("inmemory", "redis")
_REQUIRED = {"s3": ("bucket",), "gcs": ("bucket",), "azure": ("accountname", "accountkey", "container")}


def _storage(s: Mapping[str, Any]) -> StorageSettings:
    drivers = [k for k in DRIVER_KEYS if k in s]
    if len(drivers) > 1:
        found = ", ".join(drivers)
        raise ConfigurationError(f"storage: configure exactly one storage driver, found {found}")
    fields = {f.name for f in dataclasses.fields(StorageSettings)}
    kwargs: dict[str, Any] = {}
    driver = drivers[0] if drivers else None
    if driver == "filesystem":
        kwargs.update(driver="filesystem", **_pick(root=_get(s, "filesystem", "rootdirectory")))
    elif driver == "inmemory":
        if s["inmemory"] not in (None, {}, ""):
            raise ConfigurationError("storage.inmemory: this driver takes no parameters")
        kwargs["driver"] = "inmemory"
    elif driver in _REQUIRED:
        kwargs["driver"] = driver
        for key, value in (s.get(driver) or {}).items():
            target = f"{driver}_{key}"
            if target in fields:
                kwargs[target] = value
            elif key == "rootdirectory":
                kwargs["root"] = value
        for key in _REQUIRED[driver]:
            if not kwargs.get(f"{driver}_{key}"):
                raise ConfigurationError(f"storage.{driver}.{key}: required")
        if driver == "gcs" and not isinstance(kwargs.get("gcs_credentials", {}), dict):
            raise ConfigurationError("storage.gcs.credentials: expected a map (a service-account key)")
    purging = _get(s, "maintenance", "uploadpurging") or {}
    kwargs.update(
        _pick(
            blob_cache=_choice(
                _get(s, "cache", "blobdescriptor"), _BLOB_CACHES, "storage.cache.blobdescriptor"
            ),
            blob_cache_size=_get(s, "cache", "blobdescriptorsize"),
        )
    )
    return StorageSettings(
        **kwargs,
        **_pick(
            delete_enabled=_get(s, "delete", "enabled"),
            redirect_disabled=_get(s, "redirect", "disable"),
        ),
        upload_purging=UploadPurging(
            **_pick(
                enabled=purging.get("enabled"),
                age_seconds=purging.get("age"),
                interval_seconds=purging.get("interval"),
                dryrun=purging.get("dryrun"),
            )
        ),
    )


def _check_addr(addr: str, key: str) -> str:
    parse_addr(addr, key)
    return addr


def _http(t: Mapping[str, Any]) -> HttpSettings:
    h = t.get("http") or {}
    addr = h.get("addr")
    debug_addr = _get(h, "debug", "addr")
    prefix = h.get("prefix")
    if prefix:
        prefix = "/" + prefix.strip("/")
    metrics_path = _get(h, "debug", "prometheus", "path")
    health_path = _get(t, "lading", "health", "path")
    for key, value in (("http.debug.prometheus.path", metrics_path), ("lading.health.path", health_path)):
        if value is not None and not value.startswith("/"):
            raise ConfigurationError(f"{key}: must start with '/', got {value!r}")
    return HttpSettings(
        **_pick(
            addr=_check_addr(addr, "http.addr") if addr is not None else None,
            prefix=prefix,
            host=h.get("host"),
            metrics_enabled=_get(h, "debug", "prometheus", "enabled"),
            metrics_path=metrics_path,
            metrics_addr=_check_addr(debug_addr, "http.debug.addr") if debug_addr else None,
            metrics_protected=_get(t, "lading", "metrics", "protected"),
            health_path=health_path,
            drain_timeout_seconds=h.get("draintimeout"),
            keepalive_seconds=_get(t, "lading", "http", "keepalive"),
            tls=_tls(h.get("tls")),
            **_head_limits(_get(t, "lading", "http") or {}),
        )
    )


def _head_limits(lh: Mapping[str, Any]) -> dict[str, Any]:
    for key, least in (("maxheaderbytes", 1024), ("maxheaders", 1), ("maxconnections", 0)):
        if lh.get(key) is not None and lh[key] < least:
            raise ConfigurationError(f"lading.http.{key}: must be at least {least}, got {lh[key]}")
    if lh.get("headertimeout") is not None and lh["headertimeout"] <= 0:
        raise ConfigurationError(f"lading.http.headertimeout: must be positive, got {lh['headertimeout']}")
    return _pick(
        max_header_bytes=lh.get("maxheaderbytes"),
        max_headers=lh.get("maxheaders"),
        header_timeout_seconds=lh.get("headertimeout"),
        max_connections=lh.get("maxconnections"),
    )


def _throttle(t: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("user_address", "address"):
        if t.get(key) is not None and t[key] < 1:
            raise ConfigurationError(f"lading.auth.throttle.{key}: must be at least 1, got {t[key]}")
    if t.get("window") is not None and t["window"] <= 0:
        raise ConfigurationError(f"lading.auth.throttle.window: must be positive, got {t['window']}")
    return _pick(
        login_failures_per_user_address=t.get("user_address"),
        login_failures_per_address=t.get("address"),
        login_failure_window_seconds=t.get("window"),
    )


_CLIENTAUTH = {
    "require-and-verify-client-cert": "require",
    "verify-client-cert-if-given": "verify-if-given",
}


def _tls(t: Mapping[str, Any] | None) -> TlsSettings | None:
    """distribution's `http.tls` (None when absent). Every key is honoured or refused."""
    if not t:
        return None
    certificate, key = t.get("certificate"), t.get("key")
    if not certificate or not key:
        raise ConfigurationError("http.tls: certificate and key are both required to serve HTTPS")
    minimum = (t.get("minimumtls") or "tls1.2").lower()
    if minimum not in TLS_VERSIONS:
        raise ConfigurationError(
            f"http.tls.minimumtls: Lading serves tls1.2 or tls1.3, got {t.get('minimumtls')!r}"
        )
    clientauth = t.get("clientauth") or "require-and-verify-client-cert"
    if clientauth not in _CLIENTAUTH:
        expected = ", ".join(_CLIENTAUTH)
        raise ConfigurationError(f"http.tls.clientauth: expected one of {expected}, got {clientauth!r}")
    suites = t.get("ciphersuites") or ()
    openssl_ciphers(suites)  # refuses unknown names now, not at the first connection
    return TlsSettings(
        certificate=certificate,
        key=key,
        clientcas=t.get("clientcas") or (),
        clientauth=_CLIENTAUTH[clientauth],  # type: ignore[arg-type]
        minimum_version=minimum,  # type: ignore[arg-type]
        ciphersuites=suites,
    )


def _celery(c: Mapping[str, Any]) -> CelerySettings:
    known = {"broker_url", "result_backend", "commit_timeout", "manifest_timeout", "embedded_concurrency"}
    concurrency = c.get("embedded_concurrency")
    if concurrency is not None and concurrency < 1:
        key = "celery.embedded_concurrency"
        raise ConfigurationError(f"{key}: must be at least 1, got {concurrency}")
    for key in ("commit_timeout", "manifest_timeout"):
        if c.get(key) is not None and c[key] <= 0:
            raise ConfigurationError(f"celery.{key}: must be positive, got {c[key]}")
    return CelerySettings(
        **_pick(
            broker_url=c.get("broker_url"),
            result_backend=c.get("result_backend"),
            commit_timeout=c.get("commit_timeout"),
            manifest_timeout=c.get("manifest_timeout"),
            embedded_concurrency=concurrency,
        ),
        extra={k: v for k, v in c.items() if k not in known},
    )


def _require(section: Mapping[str, Any], key: str, prefix: str) -> str:
    value = section.get(key)
    if not value:
        raise ConfigurationError(f"{prefix}.{key}: required")
    return str(value)


def _auth(t: Mapping[str, Any]) -> AuthSettings:
    a = t.get("auth") or {}
    la = _get(t, "lading", "auth") or {}
    if len(a) > 1:
        raise ConfigurationError(f"auth: configure one access controller, found {', '.join(a)}")
    htpasswd = token = None
    if "htpasswd" in a:
        h = a["htpasswd"]
        htpasswd = HtpasswdAuth(
            realm=_require(h, "realm", "auth.htpasswd"), path=_require(h, "path", "auth.htpasswd")
        )
    builtin = la.get("token") or {}
    if "token" in a:
        tk = a["token"]
        token = TokenAuth(
            realm=_require(tk, "realm", "auth.token"),
            service=_require(tk, "service", "auth.token"),
            issuer=_require(tk, "issuer", "auth.token"),
            **_pick(
                rootcertbundle=tk.get("rootcertbundle"),
                jwks=tk.get("jwks"),
                builtin_htpasswd=builtin.get("htpasswd"),
                builtin_signing_key=builtin.get("signing_key"),
                expiration_seconds=int(builtin["expiration"]) if "expiration" in builtin else None,
                builtin_path=builtin.get("path"),
                rotate_refresh=builtin.get("rotate_refresh"),
            ),
        )
    elif builtin:
        raise ConfigurationError("lading.auth.token: needs auth.token (realm, service, issuer) configured")
    return AuthSettings(
        htpasswd=htpasswd,
        token=token,
        **_pick(policy_path=la.get("policy"), anonymous_pull=la.get("anonymous_pull")),
        **_throttle(la.get("throttle") or {}),
    )


def _endpoint(e: Mapping[str, Any], index: int) -> NotificationEndpoint:
    prefix = f"notifications.endpoints.{index}"
    ignore = e.get("ignore") or {}
    mediatypes = tuple(dict.fromkeys((*e.get("ignoredmediatypes", ()), *ignore.get("mediatypes", ()))))
    for key in ("timeout", "backoff"):
        if e.get(key) is not None and e[key] < 0:
            raise ConfigurationError(f"{prefix}.{key}: must not be negative")
    return NotificationEndpoint(
        name=_require(e, "name", prefix),
        url=_require(e, "url", prefix),
        ignored_mediatypes=mediatypes,
        ignored_actions=tuple(ignore.get("actions", ())),
        **_pick(
            headers=e.get("headers"),
            timeout_seconds=e.get("timeout"),
            threshold=e.get("threshold"),
            backoff_seconds=e.get("backoff"),
            disabled=e.get("disabled"),
        ),
    )


def _maintenance(m: Mapping[str, Any], beat_schedule: str | None = None) -> MaintenanceSettings:
    scrub = m.get("scrub") or {}
    gc = m.get("gc") or {}
    if scrub.get("rate") is not None and scrub["rate"] < 0:
        raise ConfigurationError("lading.maintenance.scrub.rate: must not be negative")
    return MaintenanceSettings(
        **_pick(
            scrub_enabled=scrub.get("enabled"),
            scrub_interval_seconds=scrub.get("interval"),
            scrub_rate_bytes=scrub.get("rate"),
            scrub_quarantine=scrub.get("quarantine"),
            gc_enabled=gc.get("enabled"),
            gc_interval_seconds=gc.get("interval"),
            gc_grace_seconds=gc.get("grace"),
            gc_remove_untagged=gc.get("remove_untagged"),
            reconcile_interval_seconds=_get(m, "reconcile", "interval"),
            beat_schedule_path=beat_schedule,
        )
    )


_PLATFORM = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?$")


def _upstream(u: Mapping[str, Any], key: str, prefix: str) -> Upstream:
    url = _require(u, "remoteurl", key).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{key}.remoteurl: expected an http:// or https:// URL, got {url!r}")
    for field_name in ("ttl", "tag_ttl"):
        if u.get(field_name) is not None and u[field_name] < 0:
            raise ConfigurationError(f"{key}.{field_name}: must not be negative")
    for platform in u.get("platforms") or ():
        if not _PLATFORM.match(platform):
            raise ConfigurationError(f"{key}.platforms: expected os/arch[/variant], got {platform!r}")
    return Upstream(
        prefix=prefix,
        remoteurl=url,
        **_pick(
            username=u.get("username"),
            password=u.get("password"),
            ttl_seconds=u.get("ttl"),
            tag_ttl_seconds=u.get("tag_ttl"),
            platforms=tuple(u["platforms"]) if u.get("platforms") else None,
        ),
    )


def _proxy(t: Mapping[str, Any]) -> ProxySettings:
    """distribution's `proxy:` (the whole registry mirrors one upstream) and/or Lading's
    `lading.proxy.upstreams` (one upstream per repository prefix)."""
    from pipeline.formats.names import is_valid_name

    upstreams: list[Upstream] = []
    mirror = t.get("proxy") or {}
    if mirror.get("remoteurl"):
        upstreams.append(_upstream(mirror, "proxy", ""))
    elif mirror:
        raise ConfigurationError("proxy.remoteurl: required")
    lp = _get(t, "lading", "proxy") or {}
    for index, u in enumerate(lp.get("upstreams") or []):
        key = f"lading.proxy.upstreams.{index}"
        prefix = str(u.get("prefix") or "").strip("/")
        if not prefix or not is_valid_name(prefix):
            raise ConfigurationError(
                f"{key}.prefix: expected a repository name prefix, got {u.get('prefix')!r}"
            )
        upstreams.append(_upstream(u, key, prefix))
    if mirror and len(upstreams) > 1:
        raise ConfigurationError("proxy: a whole-registry mirror excludes lading.proxy.upstreams")
    for i, a in enumerate(upstreams):
        for b in upstreams[i + 1 :]:
            if (
                a.prefix == b.prefix
                or b.prefix.startswith(a.prefix + "/")
                or a.prefix.startswith(b.prefix + "/")
            ):
                raise ConfigurationError(
                    f"lading.proxy.upstreams: prefixes {a.prefix!r} and {b.prefix!r} overlap"
                )
    local = lp.get("local")
    return ProxySettings(upstreams=tuple(upstreams), **_pick(local=local))
