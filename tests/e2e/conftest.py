"""Fixtures of the end-to-end modules: one `panelsrv serve` for the package (started once:
each module scopes what it asserts to its own shop) and each module's shop (panels, users,
services of its own). A module that needs another server defines its own `server`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.shop import Shop
from tests.kit.stack import Served, served


@pytest.fixture(scope="package")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url) as s:
        yield s


@pytest.fixture(scope="module")
def shop(server: Served, database_url: str) -> Shop:
    return Shop.open(database_url, server.port)
