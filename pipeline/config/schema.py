"""The tree of keys Lading knows (`SCHEMA`), and the checker that holds a raw YAML tree
to it: leaves converted to their kind, distribution keys Lading ignores named as warnings,
unimplemented sections refused, misspelt keys answered with the key that was meant.

Values that came from `REGISTRY_*` variables arrive as strings; the checker parses them
by the kind of their key (`env_name` names the variable in its errors)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from pipeline.config.units import parse_bool, parse_duration, parse_size
from pipeline.errors import ConfigurationError

__all__ = [
    "ANY",
    "BOOL",
    "CELERY_SECTION_KEYS",
    "DRIVER_KEYS",
    "DURATION",
    "ENV_PREFIX",
    "FOREIGN_DRIVERS",
    "HEADERS",
    "INT",
    "OPT_STR",
    "SCHEMA",
    "SECONDS",
    "SIZE",
    "STR",
    "STRLIST",
    "UNIMPLEMENTED",
    "Checker",
    "Kind",
    "Leaf",
    "ListOf",
    "Node",
    "Section",
    "dotted",
    "env_name",
    "misspelling_of",
]

# Every key can be set from the environment: this prefix, then its path (`env_name`).
ENV_PREFIX = "REGISTRY_"

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
class Leaf:
    kind: Kind


@dataclass(frozen=True)
class Section:
    keys: Mapping[str, Node]
    ignored: frozenset[str] = frozenset()  # known distribution keys Lading does not support
    unknown: Literal["warn", "extra", "error"] = "warn"
    unknown_hint: str = "not a setting Lading knows"


@dataclass(frozen=True)
class ListOf:
    item: Section


Node = Leaf | Section | ListOf


def _s(keys: Mapping[str, Node], ignored: tuple[str, ...] = (), **kw: Any) -> Section:
    return Section(keys=dict(keys), ignored=frozenset(ignored), **kw)


STR, OPT_STR, BOOL, INT = Leaf("str"), Leaf("str?"), Leaf("bool"), Leaf("int")
DURATION, SECONDS, SIZE = Leaf("duration"), Leaf("seconds"), Leaf("size")
STRLIST, HEADERS, ANY = Leaf("strlist"), Leaf("headers"), Leaf("any")

DRIVER_KEYS = ("filesystem", "inmemory", "s3", "gcs", "azure")
FOREIGN_DRIVERS = ("swift", "oss")

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
                "endpoints": ListOf(
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
                        "upstreams": ListOf(
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
assert isinstance(_CELERY_SECTION, Section)
CELERY_SECTION_KEYS = frozenset(_CELERY_SECTION.keys)


# --- validation: raw tree → typed tree ---------------------------------------------------


class Checker:
    """Walks the raw tree against SCHEMA: converts leaves, collects warnings, raises on types.

    `from_env` holds the key paths whose values came from environment strings; those are
    parsed (booleans, numbers, YAML lists) instead of being held to YAML's own types.
    """

    def __init__(self, from_env: Mapping[tuple[str, ...], str]) -> None:
        self.from_env = from_env
        self.warnings: list[str] = []

    def section(self, node: Section, raw: Any, path: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise _wrong(path, "a mapping", raw)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key)
            here = (*path, name)
            child = node.keys.get(name)
            reason = UNIMPLEMENTED.get(dotted(here))
            if reason is not None and _in_force(value):
                raise ConfigurationError(f"{dotted(here)}: {reason}")
            if child is not None:
                out[name] = self.node(child, value, here)
            elif name in node.ignored:
                why = _IGNORED_BECAUSE.get(dotted(here), "not supported by Lading")
                self.warnings.append(f"{dotted(here)}: {why}; ignored")
            elif reason is not None:
                continue  # an unimplemented section written but switched off
            elif node.unknown == "extra":
                out[name] = _env_yaml(self.from_env[here]) if here in self.from_env else value
            elif (meant := misspelling_of(name, self.names(node, path))) is not None:
                source = f" (from {env_name(here)})" if here in self.from_env else ""
                raise ConfigurationError(
                    f"{dotted(here)}{source}: unknown key; did you mean {dotted((*path, meant))}?"
                )
            elif node.unknown == "error":
                raise ConfigurationError(f"{dotted(here)}: {node.unknown_hint}")
            else:
                self.warnings.append(f"{dotted(here)}: {node.unknown_hint}; ignored")
        return out

    @staticmethod
    def names(node: Section, path: tuple[str, ...]) -> set[str]:
        """Every key distribution or Lading knows at `path`."""
        prefix = dotted(path) + "." if path else ""
        rows = {k[len(prefix) :] for k in UNIMPLEMENTED if k.startswith(prefix)}
        return {*node.keys, *node.ignored, *(r for r in rows if "." not in r)}

    def node(self, node: Node, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Section):
            return self.section(node, value, path)
        if isinstance(node, ListOf):
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
            source = f" (from {env_name(path)})" if env else ""
            raise ConfigurationError(f"{dotted(path)}{source}: {exc}") from None


def _wrong(path: tuple[str, ...], expected: str, value: Any) -> ConfigurationError:
    got = f"{type(value).__name__} {value!r}"
    return ConfigurationError(f"{dotted(path)}: expected {expected}, got {got}")


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def env_name(path: tuple[str, ...]) -> str:
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
    "bool": parse_bool,
    "int": _env_int,
    "seconds": _env_seconds,
    "size": _env_size,
    "strlist": _env_strlist,
    "headers": _env_yaml,
    "any": _env_yaml,
}
