"""In-process apps for the route tests of ``tests/unit``: the routers over ``httpx.ASGITransport``, no server.

``context`` loads the models once per test module (loading them is the slow part); ``client`` is an async client
of an app built with that context's settings; :func:`asgi_client` builds one with other settings (limits read when
the app is built) on the same loaded models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from matserve.api.context import ServingContext
from matserve.service import build_app
from matserve.settings import Settings
from tests.conftest import MODELS_DIR


def settings_for(**changes: object) -> Settings:
    """Test settings: the repository's models, no rate limit, no Redis or Triton, one embedded worker."""
    return dataclasses.replace(Settings(), models_dir=MODELS_DIR, rate_limit_per_minute=0, embedded_workers=1,
                               redis_url=None, triton_url=None, ebsd_preload=False, **changes)  # fmt: skip


async def asgi_client(context: ServingContext, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An async client of an app built with ``settings`` over the models ``context`` loaded."""
    app = build_app(settings)
    app.state.context = dataclasses.replace(context, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://matserve") as client:
        yield client


@pytest.fixture(scope="module")
def context() -> Iterator[ServingContext]:
    started = ServingContext.start(settings_for(), warm_up=False)
    yield started
    started.stop()


@pytest.fixture
async def client(context: ServingContext) -> AsyncIterator[httpx.AsyncClient]:
    async for c in asgi_client(context, context.settings):
        yield c
