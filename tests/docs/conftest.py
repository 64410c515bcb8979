"""One `panelsrv serve` for the documentation's tests that need a live server (started once;
each module makes its own panels, users and services on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kit.stack import Served, served


@pytest.fixture(scope="package")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url) as s:
        yield s
