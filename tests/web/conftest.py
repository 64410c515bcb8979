"""The browser tests of the reseller pages: Playwright (sync API) driving Debian's Chromium
against a real `panelsrv serve --workers 2`.

Chromium is the binary named by PANELSRV_TEST_CHROMIUM, else `chromium` or `chromium-browser`
on PATH (`apt-get install chromium`; `.ci/run` installs it). Without one every test here is
skipped with that reason, which `make test` prints in its `-ra` summary. (Not
PANELSRV_CHROMIUM: every other PANELSRV_* variable is a setting, and `panelsrv` refuses
unknown ones.)

The server: plain HTTP (`cookie_secure=false`), the access log on at debug level, its output
in var/web/serve.log (grepped for raw keys: none may appear there, checked again once it has
stopped); two panels, shop.test (USD) and other.test (EUR), which Chromium resolves to
127.0.0.1 (`--host-resolver-rules`); loopback exempt from the auto-block (tests/kit/stack.py
`QUIET`), so a test that wants the guard to block poses as another address with
X-Forwarded-For.
Screenshots of every page go to var/screenshots/ (gitignored with var/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from panelsrv.store import admin, db
from tests.conftest import ROOT
from tests.kit.stack import QUIET, Served
from tests.web.browse import OTHER, SHOP, Reseller, Site, blocking

HERE = Path(__file__).resolve().parent
LOG = ROOT / "var" / "web" / "serve.log"
NO_CHROMIUM = "no Chromium found: browser tests skipped (apt-get install chromium)"
PANELS = ((SHOP, "USD"), (OTHER, "EUR"))  # two currencies: the portal names its panel's


def find_chromium() -> str | None:
    named = os.environ.get("PANELSRV_TEST_CHROMIUM")
    if named:
        return named
    return shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if find_chromium() is not None:
        return
    skip = pytest.mark.skip(reason=NO_CHROMIUM)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


async def _panels(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        for domain, currency in PANELS:
            await admin.add_panel(conn, domain, currency)
    finally:
        await conn.close()


@pytest.fixture(scope="package")
def server(database_url: str) -> Iterator[Served]:
    blocking(_panels(database_url))  # before the start: every process loads them
    LOG.parent.mkdir(parents=True, exist_ok=True)
    LOG.write_bytes(b"")
    settings = {**QUIET, "cookie_secure": "false", "access_log": "true", "log_level": "debug"}
    with Served(database_url, workers=2, settings=settings, output=LOG) as s:
        yield s


@pytest.fixture(scope="package")
def browser(server: Served) -> Iterator[Browser]:
    executable = find_chromium()
    assert executable is not None
    origins = ",".join(f"http://{p}:{server.port}" for p in (SHOP, OTHER))
    args = [
        "--no-sandbox",  # as root Chromium refuses to start without it
        f"--host-resolver-rules=MAP {SHOP} 127.0.0.1, MAP {OTHER} 127.0.0.1",
        # The copy button's navigator.clipboard needs a secure context; plain HTTP is one
        # only for these origins.
        f"--unsafely-treat-insecure-origin-as-secure={origins}",
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=args)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="package")
def site(server: Served, browser: Browser, database_url: str) -> Iterator[Site]:
    site = Site(server, database_url, LOG, browser)
    yield site
    server.stop()  # every line written before the last look
    log = site.log_text()
    leaked = [key[:12] for key in site.raw_keys if key in log]
    assert not leaked, f"raw keys in var/web/serve.log: {leaked}"


@pytest.fixture
def reseller(site: Site) -> Iterator[Reseller]:
    """A new user of shop.test, password set through an invitation, signed in."""
    account = site.reseller()
    yield account
    account.visitor.close()
