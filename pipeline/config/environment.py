"""`REGISTRY_*` environment overrides, distribution's convention: `REGISTRY_` then the key
path with `_` for each level (`REGISTRY_STORAGE_DELETE_ENABLED=true`,
`REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL=…`). Keys that themselves contain `_` (Lading's
`broker_url`) resolve because the path is matched against `SCHEMA`'s keys, longest first.
`REGISTRY_STORAGE=<driver>` swaps the storage driver (dropping the other driver's options).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config.schema import (
    DRIVER_KEYS,
    ENV_PREFIX,
    FOREIGN_DRIVERS,
    SCHEMA,
    Leaf,
    ListOf,
    Node,
    Section,
    dotted,
    env_name,
    misspelling_of,
)
from pipeline.errors import ConfigurationError

__all__ = [
    "apply_env",
]

# distribution reads the config path from this variable; it is not a key override.
_NOT_OVERRIDES = frozenset({"REGISTRY_CONFIGURATION_PATH"})


def _resolve_env(tokens: list[str]) -> tuple[str, ...] | None:
    """The key path a `REGISTRY_…` variable names, or None if it names no supported key.

    Tokens are matched against the schema's keys longest-first, so `CELERY_BROKER_URL`
    finds `celery.broker_url`; a number inside a list node is an index.
    """
    node: Node = SCHEMA
    path: list[str] = []
    i = 0
    while i < len(tokens):
        if isinstance(node, ListOf):
            if not tokens[i].isdigit():
                return None
            path.append(str(int(tokens[i])))
            node = node.item
            i += 1
            continue
        if isinstance(node, Leaf):
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
    return tuple(path) if isinstance(node, Leaf) else None


def _misspelled_env(tokens: list[str]) -> tuple[str, ...] | None:
    """The key path a `REGISTRY_…` variable that names nothing was most likely meant to
    name: its last tokens one edit from a key of the section the others reach."""
    node: Node = SCHEMA
    path: list[str] = []
    i = 0
    while i < len(tokens) and isinstance(node, Section):
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


def apply_env(
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
                f"{name}: names no setting; did you mean {env_name(meant)} ({dotted(meant)})?"
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
    for key in (*DRIVER_KEYS, *FOREIGN_DRIVERS):
        if key != driver:
            storage.pop(key, None)
    storage.setdefault(driver, {})
