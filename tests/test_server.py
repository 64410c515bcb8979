"""What `App` adds around the API: the keys' last use flushed in the background."""

from __future__ import annotations

import logging

import pytest

from panelsrv.config import Config
from panelsrv.server import flush_usage, page_settings, run_config
from panelsrv.store import db, keys
from tests.api.test_handler import down_pool
from tests.store.helpers import connect, new_panel, new_user


async def test_a_failed_usage_flush_warns_without_the_key_and_keeps_it_for_the_next(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 1)
    try:
        _, domain = await new_panel(conn)
        created = await keys.create(conn, (await new_user(conn, domain)).id)
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", created.prefix)
        usage = keys.Usage()
        usage.note(key_id)
        with caplog.at_level(logging.WARNING, "panelsrv.server"):
            await flush_usage(usage, down_pool())  # logs, does not raise
        (record,) = caplog.records
        assert record.levelno == logging.WARNING and "kept for the next flush" in record.message
        assert created.raw not in record.message and created.prefix not in record.message
        await flush_usage(usage, pool)
        used = "SELECT last_used_at FROM api_keys WHERE id = $1"
        assert await conn.fetchval(used, key_id) is not None
    finally:
        await pool.close()
        await conn.close()


@pytest.mark.parametrize(
    ("setting", "serve", "run"), [("auto", True, False), (True, True, True), (False, False, False)]
)
def test_cookie_secure_auto_is_true_in_serve_and_false_in_run(
    setting: bool | str, serve: bool, run: bool
) -> None:
    cfg = Config(cookie_secure=setting)  # type: ignore[arg-type]
    assert page_settings(cfg).cookie_secure is serve
    assert page_settings(run_config(cfg)).cookie_secure is run
