"""Fixtures for the serving tests: the stub upstream on 127.0.0.1 and routers whose pool points at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
from stub_upstream import StubState, create_stub_app, serve_in_thread

UPSTREAM_KEY_ENV = "ERP_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "stub-upstream-key"


@dataclass
class Stub:
    url: str
    state: StubState


@pytest.fixture(scope="session")
def stub_server() -> Iterator[Stub]:
    state = StubState()
    with serve_in_thread(create_stub_app(state)) as url:
        yield Stub(f"{url}/v1", state)


@pytest.fixture
def stub(stub_server: Stub) -> Iterator[Stub]:
    """The session's stub upstream, with no failures planned and no hits recorded."""
    stub_server.state.reset()
    yield stub_server
    stub_server.state.reset()


@pytest.fixture
def make_router(write_registry, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> Callable[..., "Router"]:  # noqa: F821
    """Build a Router over the fitted test pool, every model served by the stub; kwargs shape the registry."""
    from router.sdk import Router
    from router.store import MemoryStore

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)

    def make(serving: dict | None = None, lambda_: float = 100.0, store=None) -> Router:
        path = write_registry(api_base=stub.url, lambda_=lambda_, api_key_env=UPSTREAM_KEY_ENV, serving=serving)
        return Router.from_registry(path, store=store or MemoryStore())

    return make
