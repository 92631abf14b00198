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
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

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
from pipeline.errors import ConfigurationError

__all__ = [
    "CELERY_SECTION_KEYS",
    "UNIMPLEMENTED",
    "load_settings",
    "misspelling_of",
    "parse_addr",
    "parse_duration",
    "parse_size",
]

ENV_PREFIX = "REGISTRY_"
# distribution reads the config path from this variable; it is not a key override.
_NOT_OVERRIDES = frozenset({"REGISTRY_CONFIGURATION_PATH"})

# --- value parsers ----------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("168h", "10m30s", "1.5h", "300ms", "0").

    Raises ValueError for anything `time.ParseDuration` would reject.
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r} (write e.g. 90s, 10m30s, 168h)")
    return sign * total


def parse_size(text: str) -> int:
    """Bytes in "64MiB", "64M", "1.5GiB" or "1024" (K/M/G/T are powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (write e.g. 1048576, 64MiB)")
    return int(float(match.group(1)) * 1024 ** _SIZE_POWERS[match.group(2).lower()])


def _parse_bool_text(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "t", "yes", "y", "on", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


# --- sections Lading does not implement and must not ignore ------------------------------

# A distribution section whose meaning Lading does not implement and whose absence changes
# security or behaviour stops start-up: serving without it would not be what the operator
# configured. One row per dotted key path; whoever implements a section deletes its row.
# A section written but switched off (empty, `enabled: false`, `disabled: true`) is inert.
UNIMPLEMENTED: dict[str, str] = {
    "validation": "manifest validation rules (manifests.urls allow/deny, indexes) are not "
    "implemented: manifests they forbid would be accepted; remove the section",
    "storage.maintenance.readonly": "read-only mode is not implemented: Lading would accept "
    "pushes and deletes; remove it or set enabled: false",
}


# Why a distribution key Lading accepts and ignores is harmless to ignore, where the generic
# "not supported by Lading" would leave the operator wondering.
_IGNORED_BECAUSE = {
    "http.secret": "not needed: Lading signs no upload state (upload sessions live in storage, "
    "so any replica continues any upload without a shared secret)",
}


def _in_force(value: Any) -> bool:
    """False for a section written but switched off (absent, empty, disabled)."""
    if value in (None, "", {}, False):
        return False
    return not (
        isinstance(value, Mapping) and (value.get("enabled") is False or value.get("disabled") is True)
    )


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps
    of two neighbouring characters (`directroy` is one edit from `directory`)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


# Spelled-out forms operators write for distribution's abbreviated keys.
_SPELLED_OUT = {"addr": ("address",), "rootdirectory": ("rootdir", "root_directory")}


def misspelling_of(name: str, known: Iterable[str]) -> str | None:
    """The known key `name` is most likely a misspelling of: one edit away (a letter added,
    missing, wrong or two swapped), a different case, or a spelled-out form (`address` for
    `addr`). None when nothing is that close: then `name` is a key of its own."""
    lowered = name.lower()
    best: tuple[int, str] | None = None
    for key in sorted(set(known)):
        if key == name:
            return None
        forms = (key.lower(), *_SPELLED_OUT.get(key, ()))
        distance = min(_edits(lowered, form) for form in forms)
        limit = 1 if len(key) >= 3 else 0  # `s3` is not a misspelling of `s4`'s neighbour
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, key)
    return best[1] if best else None


# --- the schema of supported keys -------------------------------------------------------

Kind = Literal["str", "str?", "bool", "int", "duration", "seconds", "size", "strlist", "headers", "any"]


@dataclass(frozen=True)
class _Leaf:
    kind: Kind


@dataclass(frozen=True)
class _Section:
    keys: Mapping[str, _Node]
    ignored: frozenset[str] = frozenset()  # known distribution keys Lading does not support
    unknown: Literal["warn", "extra", "error"] = "warn"
    unknown_hint: str = "not a setting Lading knows"


@dataclass(frozen=True)
class _ListOf:
    item: _Section


_Node = _Leaf | _Section | _ListOf


def _s(keys: Mapping[str, _Node], ignored: tuple[str, ...] = (), **kw: Any) -> _Section:
    return _Section(keys=dict(keys), ignored=frozenset(ignored), **kw)


STR, OPT_STR, BOOL, INT = _Leaf("str"), _Leaf("str?"), _Leaf("bool"), _Leaf("int")
DURATION, SECONDS, SIZE = _Leaf("duration"), _Leaf("seconds"), _Leaf("size")
STRLIST, HEADERS, ANY = _Leaf("strlist"), _Leaf("headers"), _Leaf("any")

_DRIVER_KEYS = ("filesystem", "inmemory", "s3", "gcs", "azure")
_KNOWN_FOREIGN_DRIVERS = ("swift", "oss")

SCHEMA = _s(
    {
        "version": ANY,
        "loglevel": STR,  # deprecated in distribution; alias of log.level
        "log": _s({"level": STR}, ignored=("formatter", "fields", "hooks", "accesslog", "reportcaller")),
        "storage": _s(
            {
                "filesystem": _s({"rootdirectory": STR}, ignored=("maxthreads",)),
                "inmemory": ANY,  # takes no parameters
                "s3": _s(
                    {
                        "bucket": STR,
                        "region": STR,
                        "regionendpoint": STR,
                        "accesskey": STR,
                        "secretkey": STR,
                        "rootdirectory": STR,
                        "forcepathstyle": BOOL,
                        "secure": BOOL,
                        "chunksize": INT,
                    },
                    ignored=(
                        "encrypt",
                        "keyid",
                        "v4auth",
                        "accelerate",
                        "multipartcopychunksize",
                        "multipartcopymaxconcurrency",
                        "multipartcopythresholdsize",
                        "storageclass",
                        "objectacl",
                        "usedualstack",
                        "loglevel",
                        "sessiontoken",
                        "skipverify",
                        "checksumdisabled",
                        "checksumalgorithm",
                    ),
                ),
                "gcs": _s(
                    {
                        "bucket": STR,
                        "keyfile": STR,
                        "credentials": ANY,
                        "rootdirectory": STR,
                        "chunksize": INT,
                        "endpoint": STR,  # Lading's: an emulator (fake-gcs-server)
                    },
                    ignored=("useragent", "maxconcurrency"),
                ),
                "azure": _s(
                    {
                        "accountname": STR,
                        "accountkey": STR,
                        "container": STR,
                        "realm": STR,
                        "serviceurl": STR,
                        "rootdirectory": STR,
                    },
                    ignored=(
                        "credentials",
                        "maxretries",
                        "retrytrytimeout",
                        "retrydelay",
                        "maxretrydelay",
                        "copystatuspollmaxretry",
                        "copystatuspolldelay",
                    ),
                ),
                "delete": _s({"enabled": BOOL}),
                "redirect": _s({"disable": BOOL}),
                "cache": _s({"blobdescriptor": STR, "blobdescriptorsize": INT}),
                "maintenance": _s(
                    {
                        "uploadpurging": _s(
                            {"enabled": BOOL, "age": DURATION, "interval": DURATION, "dryrun": BOOL}
                        )
                    },
                    ignored=("readonly",),
                ),
            },
            ignored=("tag",),
            unknown="error",
            unknown_hint="unknown storage driver or option (Lading has filesystem, inmemory, s3, gcs, azure)",
        ),
        "http": _s(
            {
                "addr": STR,
                "prefix": STR,
                "host": STR,
                "draintimeout": DURATION,
                "debug": _s(
                    {"addr": STR, "prometheus": _s({"enabled": BOOL, "path": STR})},
                ),
                # Ignoring a TLS key would serve plain HTTP or weaker TLS: refuse instead.
                "tls": _s(
                    {
                        "certificate": STR,
                        "key": STR,
                        "clientcas": STRLIST,
                        "clientauth": STR,
                        "minimumtls": STR,
                        "ciphersuites": STRLIST,
                    },
                    unknown="error",
                    unknown_hint="not supported by Lading (it would not be honoured); remove it "
                    "or terminate TLS in front of Lading",
                ),
            },
            ignored=("secret", "net", "relativeurls", "headers", "http2", "h2c"),
        ),
        "auth": _s(
            {
                "htpasswd": _s({"realm": STR, "path": STR}),
                "token": _s(
                    {
                        "realm": STR,
                        "service": STR,
                        "issuer": STR,
                        "rootcertbundle": STR,
                        "jwks": STR,
                    },
                    ignored=("autoredirect", "autoredirectpath", "signingalgorithms"),
                ),
            },
            # Ignoring an access controller would open the registry: refuse to start instead.
            unknown="error",
            unknown_hint="unsupported access controller (Lading has htpasswd and token)",
        ),
        "notifications": _s(
            {
                "endpoints": _ListOf(
                    _s(
                        {
                            "name": STR,
                            "url": STR,
                            "headers": HEADERS,
                            "timeout": DURATION,
                            "threshold": INT,
                            "backoff": DURATION,
                            "ignoredmediatypes": STRLIST,
                            "ignore": _s({"mediatypes": STRLIST, "actions": STRLIST}),
                            "disabled": BOOL,
                        }
                    )
                )
            },
            ignored=("events",),
        ),
        "celery": _s(
            {
                "broker_url": OPT_STR,
                "result_backend": OPT_STR,
                "commit_timeout": SECONDS,
                "manifest_timeout": SECONDS,
                "embedded_concurrency": INT,
            },
            unknown="extra",
        ),
        "proxy": _s(
            {"remoteurl": STR, "username": STR, "password": STR, "ttl": DURATION},
            ignored=("exec",),
        ),
        "lading": _s(
            {
                "deep_verification": ANY,  # YAML 1.1 reads a bare `off` as false
                "maintenance": _s(
                    {
                        "scrub": _s({"enabled": BOOL, "interval": SECONDS, "rate": SIZE, "quarantine": BOOL}),
                        "gc": _s(
                            {"enabled": BOOL, "interval": SECONDS, "grace": SECONDS, "remove_untagged": BOOL}
                        ),
                        "reconcile": _s({"interval": SECONDS}),
                    }
                ),
                "auth": _s(
                    {
                        "policy": STR,
                        "anonymous_pull": BOOL,
                        "throttle": _s({"user_address": INT, "address": INT, "window": SECONDS}),
                        "token": _s(
                            {
                                "htpasswd": STR,
                                "signing_key": STR,
                                "expiration": SECONDS,
                                "path": STR,
                                "rotate_refresh": BOOL,
                            }
                        ),
                    }
                ),
                "beat": _s({"schedule": STR}),
                "http": _s(
                    {
                        "keepalive": SECONDS,
                        "maxheaderbytes": SIZE,
                        "maxheaders": INT,
                        "headertimeout": SECONDS,
                        "maxconnections": INT,
                    }
                ),
                "metrics": _s({"protected": BOOL}),
                "signing": _s({"key": STR, "certificate": STR, "trusted": STR}),
                "health": _s({"path": STR}),
                "proxy": _s(
                    {
                        "local": BOOL,
                        "upstreams": _ListOf(
                            _s(
                                {
                                    "prefix": STR,
                                    "remoteurl": STR,
                                    "username": STR,
                                    "password": STR,
                                    "ttl": SECONDS,
                                    "tag_ttl": SECONDS,
                                    "platforms": STRLIST,
                                }
                            )
                        ),
                    }
                ),
            }
        ),
    },
    ignored=("middleware", "redis", "health", "validation", "reporting", "compatibility", "catalog"),
)


# Lading's own keys of the `celery:` section; any other key there must be a Celery
# setting (workers.app checks it against Celery's own table, which pipeline cannot import).
_CELERY_SECTION = SCHEMA.keys["celery"]
assert isinstance(_CELERY_SECTION, _Section)
CELERY_SECTION_KEYS = frozenset(_CELERY_SECTION.keys)


# --- validation: raw tree → typed tree ---------------------------------------------------


class _Checker:
    """Walks the raw tree against SCHEMA: converts leaves, collects warnings, raises on types.

    `from_env` holds the key paths whose values came from environment strings; those are
    parsed (booleans, numbers, YAML lists) instead of being held to YAML's own types.
    """

    def __init__(self, from_env: Mapping[tuple[str, ...], str]) -> None:
        self.from_env = from_env
        self.warnings: list[str] = []

    def section(self, node: _Section, raw: Any, path: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise _wrong(path, "a mapping", raw)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key)
            here = (*path, name)
            child = node.keys.get(name)
            reason = UNIMPLEMENTED.get(_dotted(here))
            if reason is not None and _in_force(value):
                raise ConfigurationError(f"{_dotted(here)}: {reason}")
            if child is not None:
                out[name] = self.node(child, value, here)
            elif name in node.ignored:
                why = _IGNORED_BECAUSE.get(_dotted(here), "not supported by Lading")
                self.warnings.append(f"{_dotted(here)}: {why}; ignored")
            elif reason is not None:
                continue  # an unimplemented section written but switched off
            elif node.unknown == "extra":
                out[name] = _env_yaml(self.from_env[here]) if here in self.from_env else value
            elif (meant := misspelling_of(name, self.names(node, path))) is not None:
                source = f" (from {_env_name(here)})" if here in self.from_env else ""
                raise ConfigurationError(
                    f"{_dotted(here)}{source}: unknown key; did you mean {_dotted((*path, meant))}?"
                )
            elif node.unknown == "error":
                raise ConfigurationError(f"{_dotted(here)}: {node.unknown_hint}")
            else:
                self.warnings.append(f"{_dotted(here)}: {node.unknown_hint}; ignored")
        return out

    @staticmethod
    def names(node: _Section, path: tuple[str, ...]) -> set[str]:
        """Every key distribution or Lading knows at `path`."""
        prefix = _dotted(path) + "." if path else ""
        rows = {k[len(prefix) :] for k in UNIMPLEMENTED if k.startswith(prefix)}
        return {*node.keys, *node.ignored, *(r for r in rows if "." not in r)}

    def node(self, node: _Node, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, _Section):
            return self.section(node, value, path)
        if isinstance(node, _ListOf):
            if value is None:
                return []
            if not isinstance(value, list):
                raise _wrong(path, "a list", value)
            return [self.section(node.item, item, (*path, str(i))) for i, item in enumerate(value)]
        return self.leaf(node.kind, value, path)

    def leaf(self, kind: Kind, value: Any, path: tuple[str, ...]) -> Any:
        env = path in self.from_env
        parser = _ENV_PARSERS.get(kind) if env else None
        try:
            if parser is not None and isinstance(value, str):
                value = parser(value)
            return _LEAF_CHECKS[kind](value)
        except (ValueError, TypeError) as exc:
            source = f" (from {_env_name(path)})" if env else ""
            raise ConfigurationError(f"{_dotted(path)}{source}: {exc}") from None


def _wrong(path: tuple[str, ...], expected: str, value: Any) -> ConfigurationError:
    got = f"{type(value).__name__} {value!r}"
    return ConfigurationError(f"{_dotted(path)}: expected {expected}, got {got}")


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def _env_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _check_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _check_opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else _check_str(value)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__} {value!r}")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
    return value


def _check_duration(value: Any) -> float:
    # distribution decodes these as Go durations; a bare YAML number would mean nanoseconds
    # there, so we refuse it rather than guess.
    if not isinstance(value, str):
        raise TypeError(f"expected a Go duration string such as '10s' or '168h', got {value!r}")
    return parse_duration(value)


def _check_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected seconds or a duration such as '10m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise TypeError(f"expected seconds or a duration such as '10m', got {type(value).__name__} {value!r}")


def _check_size(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected a byte count such as 67108864 or '64MiB', got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise TypeError(f"expected a byte count such as 67108864 or '64MiB', got {value!r}")


def _check_strlist(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # a lone string from the environment: comma-separated
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {type(value).__name__} {value!r}")
    return tuple(_check_str(item) for item in value)


def _check_headers(value: Any) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of header names to lists of values, got {value!r}")
    out: dict[str, list[str]] = {}
    for name, values in value.items():
        if isinstance(values, str):
            out[str(name)] = [values]
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            out[str(name)] = list(values)
        else:
            raise TypeError(f"header {name!r}: expected a list of strings, got {values!r}")
    return out


def _check_any(value: Any) -> Any:
    return value


_LEAF_CHECKS: dict[Kind, Callable[[Any], Any]] = {
    "str": _check_str,
    "str?": _check_opt_str,
    "bool": _check_bool,
    "int": _check_int,
    "duration": _check_duration,
    "seconds": _check_seconds,
    "size": _check_size,
    "strlist": _check_strlist,
    "headers": _check_headers,
    "any": _check_any,
}


def _env_int(text: str) -> int:
    return int(text.strip())


def _env_seconds(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _env_size(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def _env_strlist(text: str) -> Any:
    stripped = text.strip()
    return _env_yaml(stripped) if stripped.startswith("[") else stripped


_ENV_PARSERS: dict[Kind, Callable[[str], Any]] = {
    "bool": _parse_bool_text,
    "int": _env_int,
    "seconds": _env_seconds,
    "size": _env_size,
    "strlist": _env_strlist,
    "headers": _env_yaml,
    "any": _env_yaml,
}


# --- environment overrides --------------------------------------------------------------


def _resolve_env(tokens: list[str]) -> tuple[str, ...] | None:
    """The key path a `REGISTRY_…` variable names, or None if it names no supported key.

    Tokens are matched against the schema's keys longest-first, so `CELERY_BROKER_URL`
    finds `celery.broker_url`; a number inside a list node is an index.
    """
    node: _Node = SCHEMA
    path: list[str] = []
    i = 0
    while i < len(tokens):
        if isinstance(node, _ListOf):
            if not tokens[i].isdigit():
                return None
            path.append(str(int(tokens[i])))
            node = node.item
            i += 1
            continue
        if isinstance(node, _Leaf):
            return None
        for j in range(len(tokens), i, -1):
            candidate = "_".join(tokens[i:j])
            if candidate in node.keys:
                path.append(candidate)
                node = node.keys[candidate]
                i = j
                break
        else:
            if node.unknown == "extra":
                path.append("_".join(tokens[i:]))
                return tuple(path)
            return None
    return tuple(path) if isinstance(node, _Leaf) else None


def _misspelled_env(tokens: list[str]) -> tuple[str, ...] | None:
    """The key path a `REGISTRY_…` variable that names nothing was most likely meant to
    name: its last tokens one edit from a key of the section the others reach."""
    node: _Node = SCHEMA
    path: list[str] = []
    i = 0
    while i < len(tokens) and isinstance(node, _Section):
        for j in range(len(tokens), i, -1):
            if "_".join(tokens[i:j]) in node.keys:
                path.append("_".join(tokens[i:j]))
                node = node.keys[path[-1]]
                i = j
                break
        else:
            meant = misspelling_of("_".join(tokens[i:]), node.keys)
            if meant is None or node.unknown == "extra":
                return None
            return (*path, meant)
    return None


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = tree
    for depth, key in enumerate(path[:-1]):
        nxt_is_index = path[depth + 1].isdigit()
        if isinstance(node, list):
            index = int(key)
            while len(node) <= index:
                node.append({})
            if not isinstance(node[index], dict):
                node[index] = {}
            node = node[index]
            continue
        child = node.get(key)
        if nxt_is_index:
            if not isinstance(child, list):
                child = []
                node[key] = child
        elif not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    last = path[-1]
    if isinstance(node, list):
        index = int(last)
        while len(node) <= index:
            node.append({})
        node[index] = value
    else:
        node[last] = value


def _apply_env(
    tree: dict[str, Any], environ: Mapping[str, str], warnings: list[str]
) -> dict[tuple[str, ...], str]:
    from_env: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _NOT_OVERRIDES:
            continue
        value = environ[name]
        tokens = name[len(ENV_PREFIX) :].lower().split("_")
        if tokens == ["storage"]:
            _swap_storage_driver(tree, value.strip().lower())
            continue
        path = _resolve_env(tokens)
        if path is None and (meant := _misspelled_env(tokens)) is not None:
            raise ConfigurationError(
                f"{name}: names no setting; did you mean {_env_name(meant)} ({_dotted(meant)})?"
            )
        if path is None:
            warnings.append(f"{name}: names no setting Lading supports; ignored")
            continue
        from_env[path] = value
        _set_path(tree, path, value)
    return from_env


def _swap_storage_driver(tree: dict[str, Any], driver: str) -> None:
    storage = tree.get("storage")
    if not isinstance(storage, dict):
        storage = {}
        tree["storage"] = storage
    for key in (*_DRIVER_KEYS, *_KNOWN_FOREIGN_DRIVERS):
        if key != driver:
            storage.pop(key, None)
    storage.setdefault(driver, {})


# --- building Settings ------------------------------------------------------------------


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the YAML file at `path` (defaults if None) with `environ`'s
    `REGISTRY_*` overrides on top (os.environ if None).

    Raises ConfigurationError naming the key for a value Lading cannot run with.
    """
    env = os.environ if environ is None else environ
    tree = _read_yaml(path) if path else {}
    warnings: list[str] = []
    from_env = _apply_env(tree, env, warnings)
    checker = _Checker(from_env)
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
    drivers = [k for k in _DRIVER_KEYS if k in s]
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


_ADDR = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_addr(addr: str, key: str = "http.addr") -> tuple[str, int]:
    """(host, port) of "host:port", "[::1]:port" or ":port" (every interface, as in
    distribution). ConfigurationError naming `key` otherwise."""
    match = _ADDR.match(addr.strip())
    if not match or not 0 < int(match.group("port")) < 65536:
        raise ConfigurationError(f"{key}: expected host:port (e.g. 127.0.0.1:5000, :5000), got {addr!r}")
    return match.group("v6") or match.group("host") or "0.0.0.0", int(match.group("port"))


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
    # infra.tls imports pipeline.config.settings: importing it here, not at module level,
    # keeps `import pipeline.infra.tls` from running into a half-imported pipeline.config.
    from pipeline.infra.tls import TLS_VERSIONS, openssl_ciphers

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
