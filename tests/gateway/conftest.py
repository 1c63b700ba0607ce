from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from lorch.engine.gateway.cassette import Cassette
from lorch.engine.gateway.server import Gateway
from tests.gateway.upstream import Reply, Upstream


@pytest.fixture
def upstream() -> Iterator[Callable[[list[Reply]], Upstream]]:
    started: list[Upstream] = []

    def make(replies: list[Reply]) -> Upstream:
        started.append(Upstream(replies))
        return started[-1]

    yield make
    for u in started:
        u.close()


@pytest.fixture
def gateway() -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(provider: str, url: str, **kwargs: Any) -> Gateway:
        started.append(Gateway(provider, url, **kwargs).start())
        return started[-1]

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def cassette(tmp_path: Path) -> Iterator[Callable[[str], Cassette]]:
    opened: list[Cassette] = []

    def make(name: str = "calls.jsonl") -> Cassette:
        opened.append(Cassette(tmp_path / name))
        return opened[-1]

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def sdk() -> Iterator[Callable[..., anthropic.Anthropic]]:
    """Anthropic SDK clients for a gateway, each closed at the end of the test."""
    made: list[anthropic.Anthropic] = []

    def make(gw: Gateway, api_key: str = "sk-test", **kwargs: Any) -> anthropic.Anthropic:
        made.append(
            anthropic.Anthropic(base_url=gw.base_url, api_key=api_key, max_retries=0, **kwargs)
        )
        return made[-1]

    yield make
    for client in made:
        client.close()
