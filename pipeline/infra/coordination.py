"""Where the processes of one deployment meet: the one place that reads the configured
broker and result-backend URLs and decides where repository locks and job results live.

URLs, classified by `kind_of(url)`:

| kind        | schemes (as Celery / kombu / redis-py accept them)                      |
|-------------|-------------------------------------------------------------------------|
| `redis`     | `redis://`, `rediss://` (TLS), `unix:///path.sock?db=N` (redis-py's     |
|             | spelling) and `redis+socket:///path.sock?virtual_host=N` (kombu's)      |
| `sentinel`  | `sentinel://host:26379;sentinel://host2:26379` with the master's name   |
|             | in `celery.broker_transport_options.master_name` (or                    |
|             | `result_backend_transport_options` for a Sentinel result backend) and   |
|             | the sentinels' own credentials in `...transport_options.sentinel_kwargs`|
| `amqp`      | `amqp://`, `amqps://`, `pyamqp://` (RabbitMQ: a broker, holds no locks) |
| `memory`    | `memory://` (kombu's in-process transport: embedded mode only)          |
| `other`     | anything else (`rpc://`, a database backend, …): no shared locks        |

Decisions (`coordination_for(settings)`):

- embedded (no `celery.broker_url`): every worker is a thread of the one process and job
  results live in the in-process result store (workers.embedded). Locks are file locks
  beside filesystem storage (`pipeline.infra.locks.FileLocks` in `<rootdirectory>/.lading-locks`),
  so a `lading gc` run from the command line next to `lading serve` on the same host
  shares them; with in-memory storage nothing outside the process can reach the data and
  they are in-process (`LocalLocks`). Embedded mode on S3 storage has no lock shared with
  another process: run maintenance through the embedded schedule, or scale out.
- scaled out: locks live in the Redis of the broker when the broker is Redis (plain or
  Sentinel), else in the Redis of the result backend (RabbitMQ broker + Redis results).
  Job results live in the Celery result backend. A scaled-out configuration with no Redis
  at all has no shared place for locks: `coordination_for` raises ConfigurationError
  naming the keys to set instead of silently using per-process locks, which would let
  `lading gc` run beside the scheduled gc and API deletes race worker commits.

Batch-mode pending-commit records live on the registry's storage (pipeline.stores.pending), which
every process of a deployment shares already.

Every Redis client Lading opens itself (locks, queue depth, health, the API's result
listener) is built here by `RedisTarget.client()` / `async_client()`, with socket timeouts,
so a Redis that stops answering fails a call instead of hanging it. Celery and kombu build
their own from the same URLs; `celery_url()` translates `unix://` to kombu's spelling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pipeline.errors import ConfigurationError
from pipeline.infra.locks import FileLocks, LocalLocks, RepositoryLocks

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from pipeline.config.settings import Settings

__all__ = [
    "Coordination",
    "RedisTarget",
    "celery_url",
    "coordination_for",
    "is_redis",
    "kind_of",
    "redis_target",
]

Kind = Literal["redis", "sentinel", "amqp", "memory", "other"]

LOCK_DIR = ".lading-locks"
"""Embedded mode on filesystem storage: the lock files' directory, in the storage root
beside distribution's `docker/` tree (outside its layout)."""

LOCK_CLIENT_PREFIX = "lading-locks-"
"""Lock connections are named `lading-locks-<pid>` (CLIENT LIST shows who waits)."""

SOCKET_TIMEOUT = 5.0
"""Seconds a Redis call Lading makes itself may block (connect and each reply)."""

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+socket", "socket"})
_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
_SOCKET_SCHEMES = frozenset({"unix", "redis+socket", "socket"})

BROKER_KEYS = "celery.broker_url (REGISTRY_CELERY_BROKER_URL)"
BACKEND_KEYS = "celery.result_backend (REGISTRY_CELERY_RESULT_BACKEND)"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def kind_of(url: str | None) -> Kind:
    """What the URL names (see the module docstring's table)."""
    scheme = _scheme(url or "")
    if scheme in _REDIS_SCHEMES:
        return "redis"
    if scheme == "sentinel":
        return "sentinel"
    if scheme in _AMQP_SCHEMES:
        return "amqp"
    if scheme == "memory":
        return "memory"
    return "other"


def is_redis(url: str | None) -> bool:
    """True for every URL naming a Redis (plain, TLS, unix socket or Sentinel)."""
    return kind_of(url) in ("redis", "sentinel")


def celery_url(url: str) -> str:
    """`url` as Celery and kombu accept it: `unix:///p.sock?db=N` becomes
    `redis+socket:///p.sock?virtual_host=N` (kombu has no `unix` transport); every other
    URL is returned unchanged."""
    if _scheme(url) != "unix":
        return url
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    db = query.pop("db", None)
    if db is not None:
        query["virtual_host"] = db
    auth = f"{parts.netloc}" if parts.netloc else ""
    suffix = f"?{urlencode(query)}" if query else ""
    return f"redis+socket://{auth}{parts.path}{suffix}"


@dataclass(frozen=True)
class RedisTarget:
    """One Redis as configured: a URL (for `redis` kind) or a Sentinel chain with the
    name of the master it watches (for `sentinel` kind)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=dict)
    db: int = 0
    password: str | None = None
    username: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def client(self, timeout: float = SOCKET_TIMEOUT, name: str | None = None) -> redis.Redis:
        """A redis-py client with socket timeouts (the Sentinel-managed master's, for a
        Sentinel target: it follows a failover). `name`: its connections' CLIENT SETNAME,
        so `redis-cli client list` shows which process is which."""
        import redis
        import redis.sentinel

        client: redis.Redis = self._build(redis.Redis, redis.sentinel.Sentinel, timeout, timeout, name)
        return client

    def async_client(self, timeout: float | None = SOCKET_TIMEOUT) -> redis.asyncio.Redis:
        """The asyncio client of the same Redis (`timeout=None`: replies may take as long
        as they take, for a pub/sub reader; connecting is still bounded)."""
        import redis.asyncio
        import redis.asyncio.sentinel

        connect = timeout if timeout is not None else SOCKET_TIMEOUT
        client: redis.asyncio.Redis = self._build(
            redis.asyncio.Redis, redis.asyncio.sentinel.Sentinel, timeout, connect, None
        )
        return client

    def _build(
        self, redis_cls: Any, sentinel_cls: Any, timeout: float | None, connect: float, name: str | None
    ) -> Any:
        """One client of `redis_cls` (sync or asyncio: the two share their signatures)."""
        timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect}
        if name is not None:
            timeouts["client_name"] = name
        if not self.is_sentinel:
            return redis_cls.from_url(_redis_py_url(self.url), **timeouts)
        sentinel = sentinel_cls(
            list(self.sentinels),
            sentinel_kwargs={"socket_timeout": connect, **dict(self.sentinel_kwargs)},
            socket_timeout=timeout,
            socket_connect_timeout=connect,
        )
        return sentinel.master_for(
            str(self.master_name), db=self.db, password=self.password, username=self.username, **timeouts
        )

    def describe(self) -> str:
        """For logs: where it is, without credentials."""
        if self.is_sentinel:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {hosts} master {self.master_name} db {self.db}"
        return redacted(self.url)


def _redis_py_url(url: str) -> str:
    """kombu's socket spellings (`redis+socket://`, `socket://`, `?virtual_host=N`) as
    redis-py's `unix:///path?db=N`; other URLs unchanged."""
    scheme = _scheme(url)
    if scheme not in _SOCKET_SCHEMES or scheme == "unix":
        return url
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    vhost = query.pop("virtual_host", None)
    if vhost is not None:
        query["db"] = vhost
    suffix = f"?{urlencode(query)}" if query else ""
    return f"unix://{parts.netloc}{parts.path}{suffix}"


def redis_target(url: str | None, transport_options: Mapping[str, Any] | None = None) -> RedisTarget | None:
    """The Redis `url` names (None when it names none). A Sentinel URL needs
    `transport_options["master_name"]`; ConfigurationError without it."""
    if not url or not is_redis(url):
        return None
    if kind_of(url) == "redis":
        return RedisTarget(url=url)
    options = dict(transport_options or {})
    master = options.get("master_name")
    if not master:
        raise ConfigurationError(
            "celery.broker_transport_options.master_name",
            f"a sentinel:// URL needs the name of the master the sentinels watch: set "
            f"master_name in celery.broker_transport_options (broker) or "
            f"celery.result_backend_transport_options (result backend) for {redacted(url)}",
        )
    sentinels: list[tuple[str, int]] = []
    db = 0
    password = username = None
    for chunk in url.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        parts = urlsplit(chunk)
        if parts.hostname is None:
            raise ConfigurationError(url, "a sentinel:// URL names no host")
        sentinels.append((parts.hostname, parts.port or 26379))
        path = parts.path.strip("/")
        if path.isdigit():
            db = int(path)
        password = unquote(parts.password) if parts.password else password
        username = unquote(parts.username) if parts.username else username
    kwargs = options.get("sentinel_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError("sentinel_kwargs", "transport option sentinel_kwargs must be a mapping")
    return RedisTarget(
        url=url,
        sentinels=tuple(sentinels),
        master_name=str(master),
        sentinel_kwargs=dict(kwargs),
        db=db,
        password=password,
        username=username,
    )


def redacted(url: str | None) -> str:
    """A URL (or `;`-separated chain) without passwords, for logs and messages."""
    if not url:
        return str(url)
    out = []
    for chunk in url.split(";"):
        if "@" not in chunk or "://" not in chunk:
            out.append(chunk)
            continue
        scheme, _, rest = chunk.partition("://")
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        out.append(f"{scheme}://{user}:***@{host}" if user else f"{scheme}://***@{host}")
    return ";".join(out)


@dataclass(frozen=True)
class Coordination:
    """Where this deployment's processes share state (see the module docstring).

    `redis`: the Redis holding repository locks (None only in embedded mode).
    `results`: the Redis holding job results when the result backend is a Redis (None:
    another backend, or the embedded in-process store)."""

    embedded: bool
    redis: RedisTarget | None = None
    results: RedisTarget | None = None
    lock_lease: float = 30.0
    lock_dir: str | None = None  # embedded mode on filesystem storage: FileLocks there

    def locks(self) -> RepositoryLocks:
        """The repository locks every process of the deployment shares."""
        if self.redis is None:
            return FileLocks(self.lock_dir) if self.lock_dir is not None else LocalLocks()
        from pipeline.infra.locks import RedisLocks

        name = f"{LOCK_CLIENT_PREFIX}{os.getpid()}"
        return RedisLocks(self.redis.client(name=name), lease=self.lock_lease)

    def describe(self) -> str:
        if self.redis is None:
            where = f"file locks in {self.lock_dir}" if self.lock_dir else "in-process locks"
            return f"embedded: {where}, in-process results"
        return f"locks in Redis ({self.redis.describe()})"


def _options(settings: Settings, key: str) -> Mapping[str, Any]:
    value = settings.celery.extra.get(key)
    return value if isinstance(value, Mapping) else {}


def result_backend_url(settings: Settings) -> str | None:
    """The result backend the deployment uses: the configured one, else a Redis broker's
    own URL (Celery stores results next to the jobs), else None."""
    cfg = settings.celery
    if cfg.result_backend:
        return cfg.result_backend
    if cfg.broker_url and is_redis(cfg.broker_url):
        return cfg.broker_url
    return None


def coordination_for(settings: Settings) -> Coordination:
    """Decide where locks and results live for `settings` (module docstring). Raises
    ConfigurationError for a scaled-out configuration with no Redis for locks."""
    cfg = settings.celery
    if cfg.embedded:
        storage = settings.storage
        lock_dir = os.path.join(storage.root, LOCK_DIR) if storage.driver == "filesystem" else None
        return Coordination(embedded=True, lock_dir=lock_dir)
    broker = redis_target(cfg.broker_url, _options(settings, "broker_transport_options"))
    if cfg.result_backend:
        results = redis_target(cfg.result_backend, _options(settings, "result_backend_transport_options"))
    else:
        results = broker  # a Redis broker stores the results too (workers.app)
    locks = broker or results
    if locks is None:
        raise ConfigurationError(
            "celery.result_backend",
            f"a scaled-out deployment (broker {redacted(cfg.broker_url)}) needs a Redis that every "
            f"process shares for repository and maintenance locks, and this configuration has "
            f"none: set {BACKEND_KEYS} to a redis://, rediss://, unix:// or sentinel:// URL, or "
            f"use a Redis broker in {BROKER_KEYS}",
        )
    return Coordination(embedded=False, redis=locks, results=results)
