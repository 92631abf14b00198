"""Fixtures for in-process API tests: an app over an in-memory registry whose jobs run in
threads of this process (tests.support.inline_jobs.InlineJobClient), and an httpx client on it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.app import create_app
from pipeline.config import HttpSettings, Settings, StorageSettings
from pipeline.registry import Registry
from tests.support.inline_jobs import InlineJobClient


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclasses.dataclass
class Api:
    client: httpx.AsyncClient
    app: Any
    registry: Registry
    jobs: Any
    settings: Settings


def make_settings(delete_enabled: bool = True, redirect_disabled: bool = True, **http: Any) -> Settings:
    storage = StorageSettings(
        driver="inmemory", delete_enabled=delete_enabled, redirect_disabled=redirect_disabled
    )
    return Settings(storage=storage, http=HttpSettings(**http))


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Any]]:
    """make_api(delete_enabled=True, registry=None, jobs=None, access=None,
    redirect_disabled=True, **http) -> Api."""
    clients: list[httpx.AsyncClient] = []
    closers: list[Callable[[], None]] = []

    async def factory(
        delete_enabled: bool = True,
        registry: Registry | None = None,
        jobs: Any = None,
        access: Any = None,
        redirect_disabled: bool = True,
        **http: Any,
    ) -> Api:
        settings = make_settings(delete_enabled, redirect_disabled, **http)
        registry = registry or Registry.in_memory(settings)
        if jobs is None:
            jobs = InlineJobClient(registry)
            closers.append(jobs.close)
        app = create_app(settings, registry, jobs, access)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test")
        clients.append(client)
        return Api(client, app, registry, jobs, settings)

    yield factory
    for client in clients:
        await client.aclose()
    for close in closers:
        close()


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    """An open registry with deletes enabled."""
    return await make_api()
