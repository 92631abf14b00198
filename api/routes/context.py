"""What a route handler receives, and the URLs handlers hand back to clients.

`RequestContext` bundles the request with the process-wide objects (settings, registry, job
client, notifier) and the parts of the path the router matched (`name`, already validated,
plus route-specific params); `notify_blob` / `notify_manifest` report events (api.notify).
`Urls` builds every `Location` / `Link` the API returns, honouring `http.prefix` and, when
set, `http.host` (then locations are absolute, as behind a proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request

from api.notify import BLOB_MEDIA_TYPE, Notifier
from api.threads import run_blocking
from pipeline.config import Settings
from pipeline.events import Action
from pipeline.formats.digest import Digest
from pipeline.jobs import JobClient
from pipeline.registry import Registry

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
    notifier: Notifier | None = None  # api.notify; notify_* return at once when it is disabled

    @property
    def head(self) -> bool:
        return self.request.method == "HEAD"

    def grant(self, name: str) -> bool:
        """An optional access grant recorded by api.access_table.enforce."""
        grants: dict[str, bool] = getattr(self.request.state, "grants", {})
        return grants.get(name, False)

    async def blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a storage call (it may block) in a worker thread (api.threads)."""
        return await run_blocking(func, *args)

    async def notify_blob(self, action: Action, digest: str, size: int | None = None, **extra: str) -> None:
        """Emit `action` on a blob of this repository (api.notify). Except for a delete, a
        size not given is read from storage (if that fails the event goes without one).
        `extra`: fromRepository of a mount."""
        if self.notifier is None or not self.notifier.enabled:
            return
        target: dict[str, Any] = {"digest": digest, **extra}
        if action != "delete":  # distribution reports a delete by digest alone
            if size is None:
                try:
                    size = await self.blocking(self.registry.repo_blobs.stat, self.name, Digest.parse(digest))
                except Exception:  # a notification never fails the request it reports
                    size = None
            target.update(mediaType=BLOB_MEDIA_TYPE, size=size, url=self.urls.blob(self.name, digest))
        self.notifier.emit(self.request, action, self.name, target)

    async def notify_manifest(
        self,
        action: Action,
        digest: str | None,
        media_type: str | None = None,
        size: int | None = None,
        tag: str | None = None,
    ) -> None:
        """Emit `action` on a manifest (by digest, with `tag` when a tag named it) or, for
        a tag delete, on the tag alone (digest None)."""
        if self.notifier is None or not self.notifier.enabled:
            return
        target: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size, "tag": tag}
        if digest is not None and action != "delete":
            target["url"] = self.urls.manifest(self.name, digest)
        self.notifier.emit(self.request, action, self.name, target)
