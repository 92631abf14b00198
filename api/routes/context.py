"""What a route handler receives, and the URLs handlers hand back to clients.

`RequestContext` bundles the request with the process-wide objects (settings, registry, job
client) and the parts of the path the router matched (`name`, already validated, plus
route-specific params). `Urls` builds every `Location` / `Link` the API returns, honouring
`http.prefix` and, when set, `http.host` (then locations are absolute, as behind a proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio.to_thread
from starlette.requests import Request

from pipeline.jobs import JobClient
from pipeline.registry import Registry
from pipeline.settings import Settings

T = TypeVar("T")


class Urls:
    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.http.prefix.rstrip("/")
        self.host = settings.http.host.rstrip("/")

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        url = f"{self.host}{self.prefix}{path}"
        if query:
            url += "?" + urlencode(query)
        return url

    def blob(self, name: str, digest: str) -> str:
        return self._url(f"/v2/{name}/blobs/{digest}")

    def upload(self, name: str, upload_id: str, query: dict[str, str] | None = None) -> str:
        return self._url(f"/v2/{name}/blobs/uploads/{upload_id}", query)

    def manifest(self, name: str, reference: str) -> str:
        return self._url(f"/v2/{name}/manifests/{reference}")

    def tags(self, name: str, query: dict[str, str]) -> str:
        # Link headers stay relative: clients resolve them against the request URL.
        return f"{self.prefix}/v2/{name}/tags/list?{urlencode(query)}"

    def catalog(self, query: dict[str, str]) -> str:
        return f"{self.prefix}/v2/_catalog?{urlencode(query)}"


@dataclass
class RequestContext:
    request: Request
    settings: Settings
    registry: Registry
    jobs: JobClient
    urls: Urls
    name: str = ""
    params: dict[str, str] = field(default_factory=dict)
    access: Any = None  # api.auth Access (or None); only the catalog consults it, to filter

    @property
    def head(self) -> bool:
        return self.request.method == "HEAD"

    def grant(self, name: str) -> bool:
        """An optional access grant recorded by api.access_table.enforce."""
        grants: dict[str, bool] = getattr(self.request.state, "grants", {})
        return grants.get(name, False)

    async def blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a storage call (it may block) in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args)
