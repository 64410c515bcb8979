"""The portal's samples run (issue 17, point 3): every curl / PHP / Python / Node sample is read
out of the page `GET /api` serves, its placeholders filled (key, order, refill and webhook ids,
webhook URL), and run with the real interpreter against a live `panelsrv serve`; its answer is
checked. A sample that does not work fails the build; a language whose interpreter is missing
is skipped with that reason (`.ci/run` installs php-cli, php-curl, nodejs, curl and openssl).

The server's default panel is this module's, so a sample's URL is pointed at
`http://127.0.0.1:<port>/api/v2` as it is, without a Host header. Each language has a user of
its own (its orders, refills and webhooks stay within the per-user bounds); its samples run
concurrently.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from panelsrv.api.actions import STRUCTS
from panelsrv.client import sign_webhook
from panelsrv.docs import samples
from panelsrv.store import admin, db
from tests.conftest import run_async
from tests.e2e.kit import assert_audit_clean, sql
from tests.e2e.served import World, call, offered
from tests.kit.stack import Served, served

DOMAIN = f"docs{secrets.token_hex(4)}.test"
CURRENCY = "EUR"
SERVICE = 7_100_001  # panel-local id, far above any global id of the test database
STATUSES = {"Pending", "In progress", "Completed", "Partial", "Canceled", "Refunded", "Error"}
# language -> (the data-sample values it runs, the tools it needs, suffix, argv before the file)
LANGUAGES: dict[str, tuple[set[str], list[str], str, list[str]]] = {
    "curl": ({"curl", "shell"}, ["bash", "curl", "openssl"], ".sh", ["bash"]),
    "php": ({"php"}, ["php"], ".php", ["php"]),
    "python": ({"python", "python-client"}, [], ".py", [sys.executable]),
    "node": ({"node"}, ["node"], ".mjs", ["node"]),
}


@dataclass(frozen=True)
class Found:
    language: str
    action: str
    code: str


class _Samples(HTMLParser):
    """Every <pre data-sample=... data-action=...> of a page, its text unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[Found] = []
        self._open: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "pre" and named.get("data-sample"):
            self._open = (named["data-sample"] or "", named.get("data-action") or "")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._open is not None:
            self.found.append(Found(*self._open, "".join(self._text)))
            self._open = None


def page_samples(html: str) -> list[Found]:
    parser = _Samples()
    parser.feed(html)
    return parser.found


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, default_panel=DOMAIN, webhook_allow_private="true") as s:
        yield s


@pytest.fixture(scope="module")
def page(server: Served, database_url: str) -> str:
    run_async(_open_panel(server, database_url))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/api", headers={"Host": DOMAIN})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text
    return text


async def _open_panel(server: Served, database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        await admin.add_panel(conn, DOMAIN, CURRENCY)
    finally:
        await conn.close()
    world = World(database_url)
    await world.service(DOMAIN, local_id=SERVICE, rate="1.00", min=10, max=100_000,
                        refill=True, cancel=True)  # fmt: skip
    _, key = await world.user(DOMAIN)
    await offered(server.port, DOMAIN, key, SERVICE)


def test_every_action_has_a_sample_in_every_language(page: str) -> None:
    found = {(s.language, s.action) for s in page_samples(page)}
    for action in STRUCTS:
        for language, _ in samples.REQUEST_LANGUAGES:
            assert (language, action) in found, (language, action)
    for language, _ in samples.VERIFY_LANGUAGES:
        assert (language, "verify") in found
    assert samples.KEY in page and f"https://{DOMAIN}/api/v2" in page


# -- filling and running ---------------------------------------------------------------------


class Account:
    """A language's user: its key and the ids its samples act on, made through the API."""

    def __init__(self, port: int, database_url: str, key: str) -> None:
        self.port = port
        self.database_url = database_url
        self.key = key

    async def api(self, action: str, **fields: object) -> Any:
        r = await call(self.port, {"key": self.key, "action": action, **fields}, host=DOMAIN)
        assert r.status == 200, (action, r.body)
        return r.json()

    async def order(self, completed: bool = False) -> int:
        link = f"https://example.com/{secrets.token_hex(4)}"
        placed = await self.api("add", service=SERVICE, link=link, quantity=100)
        if completed:
            await sql(self.database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1",
                      placed["order"])  # fmt: skip
        return int(placed["order"])

    async def values(self, action: str) -> dict[str, str]:
        """What the placeholders of a sample of `action` stand for."""
        if action in ("status", "cancel"):
            return {samples.ORDER_ID: str(await self.order())}
        if action == "status_many":
            first, second = await self.order(), await self.order()
            return {samples.ORDER_IDS: f"{first},{second}"}
        if action == "refill":
            return {samples.ORDER_ID: str(await self.order(completed=True))}
        if action == "refill_status":
            refill = await self.api("refill", order=await self.order(completed=True))
            return {samples.REFILL_ID: str(refill["refill"])}
        if action == "webhook_delete":
            added = await self.api("webhook_add", url="https://127.0.0.1/hook")
            return {samples.WEBHOOK_ID: str(added["webhook"])}
        return {}


def filled(code: str, port: int, values: dict[str, str]) -> str:
    code = code.replace(f"https://{DOMAIN}/api/v2", f"http://127.0.0.1:{port}/api/v2")
    code = code.replace(samples.WEBHOOK_URL, "https://127.0.0.1/panel-webhook")
    for placeholder in sorted(values, key=len, reverse=True):  # ORDER_ID_2 before ORDER_ID
        code = code.replace(placeholder, values[placeholder])
    return code


def run(argv: list[str], suffix: str, code: str, *, stdin: bytes = b"",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sample{suffix}"
        path.write_text(code)
        return subprocess.run([*argv, str(path)], input=stdin, capture_output=True, timeout=60,
                              env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def check_answer(action: str, answer: Any, ids: dict[str, str]) -> None:
    """The answer has the shape API.md gives the action."""
    match action:
        case "services":
            assert any(s["service"] == SERVICE and s["rate"] == "1.00" for s in answer), answer
        case "add":
            assert set(answer) == {"order"} and isinstance(answer["order"], int)
        case "status":
            assert set(answer) == {"charge", "start_count", "status", "remains", "currency"}
            assert answer["status"] in STATUSES and answer["currency"] == CURRENCY
        case "status_many":
            assert sorted(answer) == sorted(ids[samples.ORDER_IDS].split(","))
            assert all(entry["currency"] == CURRENCY for entry in answer.values())
        case "refill":
            assert set(answer) == {"refill"} and isinstance(answer["refill"], int)
        case "refill_status":
            assert answer == {"status": "Pending"}
        case "cancel":
            assert answer == {"cancel": 1}
        case "balance":
            assert set(answer) == {"balance", "currency"} and answer["currency"] == CURRENCY
        case "webhook_add":
            assert set(answer) == {"webhook", "secret"} and answer["secret"].startswith("whsec_")
        case "webhooks":
            assert all(set(w) == {"webhook", "url", "events", "active"} for w in answer)
        case "webhook_delete":
            assert answer == {"deleted": 1}
        case _:
            raise AssertionError(f"no check for {action}")


def run_verify(argv: list[str], suffix: str, code: str) -> None:
    """A signed delivery passes; the same signature over another body, and a stale one, do
    not."""
    secret = "whsec_" + secrets.token_hex(16)
    body = json.dumps({"id": "evt_1", "type": "order.status", "data": {"status": "Ü"}}).encode()
    fresh = sign_webhook(secret, int(time.time()), body)
    stale = sign_webhook(secret, int(time.time()) - 3600, body)
    env = {"WEBHOOK_SECRET": secret, "X_PANEL_SIGNATURE": fresh}
    done = run(argv, suffix, code, stdin=body, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, b"valid"), done.stderr.decode()
    assert run(argv, suffix, code, stdin=body + b" ", env=env).returncode != 0
    env["X_PANEL_SIGNATURE"] = stale
    assert run(argv, suffix, code, stdin=body, env=env).returncode != 0


@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_the_samples_of_the_portal_run(
    server: Served, page: str, database_url: str, language: str
) -> None:
    kinds, tools, suffix, argv = LANGUAGES[language]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if language == "php" and not missing:
        modules = subprocess.run(["php", "-m"], capture_output=True, text=True, check=False)
        missing = [] if "curl" in modules.stdout.split() else ["php-curl"]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    mine = [s for s in page_samples(page) if s.language in kinds]
    assert len(mine) >= len(STRUCTS) + 1

    async def prepare() -> list[tuple[Found, dict[str, str]]]:
        _, key = await World(database_url).user(DOMAIN, balance="1000.00")
        account = Account(server.port, database_url, key)
        return [(s, {samples.KEY: key, **await account.values(s.action)}) for s in mine]

    jobs = run_async(prepare())

    def one(job: tuple[Found, dict[str, str]]) -> None:
        sample, ids = job
        code = filled(sample.code, server.port, ids)
        if sample.action == "verify":
            run_verify(argv, suffix, code)
            return
        done = run(argv, suffix, code)
        out = done.stdout.decode()
        assert done.returncode == 0, (sample.action, out, done.stderr.decode(), code)
        check_answer(sample.action, json.loads(out), ids)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # the interpreters are CPU-bound
        for _ in pool.map(one, jobs):  # re-raises the first failure
            pass
    assert_audit_clean(database_url)
