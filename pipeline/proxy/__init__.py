"""Pull-through cache (proxy mode): repositories that mirror an upstream registry.

`route(settings, name)` says whether repository `name` is proxied and, if so, by which
upstream and under which upstream name (`hub/library/alpine` → `library/alpine` on the
`hub` upstream; with distribution's `proxy:` section every name is proxied as is).

- pipeline.proxy.upstream: the HTTP client of one upstream (token/Basic auth, errors).
- pipeline.proxy.leases: single-flight leases (Redis or in-process).
- pipeline.proxy.cache: the use cases — fetch a manifest or a blob into the cache
  (verified by digest before anything is committed), warm an image, tag freshness,
  tags and referrers lists with the cached copy as fallback, the reader that streams a
  blob while it arrives, and expiry of unused content.
- pipeline.proxy.stats: counters per upstream for /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.settings import Settings, Upstream
from pipeline.errors import OperationUnsupported


@dataclass(frozen=True)
class ProxyTarget:
    upstream: Upstream
    remote_name: str  # the repository's name on the upstream


def route(settings: Settings, name: str) -> ProxyTarget | None:
    """The upstream repository `name` mirrors, or None for a local repository.
    OperationUnsupported when `name` is outside every prefix and local repositories are
    not allowed (`lading.proxy.local: false`)."""
    proxy = settings.proxy
    if not proxy.upstreams:
        return None
    for upstream in proxy.upstreams:
        if upstream.prefix == "":
            return ProxyTarget(upstream, _official(upstream, name))
        if name.startswith(upstream.prefix + "/"):
            return ProxyTarget(upstream, _official(upstream, name[len(upstream.prefix) + 1 :]))
    if not proxy.local:
        raise OperationUnsupported(f"repository {name!r} is outside every proxied prefix")
    return None


DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com")


def _official(upstream: Upstream, name: str) -> str:
    """Docker Hub keeps its official images under `library/`: `hub/alpine` is
    `library/alpine` there (what the docker client itself asks for)."""
    host = upstream.remoteurl.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if "/" not in name and host in DOCKER_HUB_HOSTS:
        return f"library/{name}"
    return name
