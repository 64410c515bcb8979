"""The process's current catalog (store.catalog.LiveCatalog): a burst of changes is one
reload, a pricing change reloads nothing, a failed reload keeps the catalog in use."""

from __future__ import annotations

import logging

import pytest

from panelsrv.store import catalog, db
from tests.store.helpers import connect, new_panel, new_service


async def test_changes_coalesce_pricing_drops_answers_and_failures_keep_the_catalog(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await db.create_pool(database_url, 2)
    conn = await connect(database_url)
    cleared: list[None] = []
    try:
        first = await catalog.load(pool)
        live = catalog.LiveCatalog(pool, first, lambda: cleared.append(None))
        _, domain = await new_panel(conn)
        service = await new_service(conn, domain=domain)
        assert service not in live.catalog.services

        live.changed("services")
        pending = live._pending
        live.changed("panels")
        assert pending is not None and live._pending is pending  # one reload for the burst
        assert live.catalog is first
        await live.reload()
        assert live._pending is None and service in live.catalog.services

        reloaded = live.catalog
        reloaded._listings[(0, 0, 0)] = b"[]"
        live.changed("user_rates")
        assert cleared == [None] and not reloaded._listings and live._pending is None
        assert live.catalog is reloaded

        live.changed("services")
        await live.close()  # the pending reload is canceled
        await pool.close()
        with caplog.at_level(logging.ERROR, logger="panelsrv"):
            await live.reload()
        assert live.catalog is reloaded
        assert "catalog reload failed" in caplog.text
    finally:
        await conn.close()
        await pool.close()
