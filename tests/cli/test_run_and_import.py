"""`panelsrv run` as a new user meets it, and `panelsrv service import` from a provider."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from decimal import Decimal
from typing import Any

from panelsrv import money
from panelsrv.client.answers import Service
from panelsrv.sim.provider import Simulator
from panelsrv.store import db
from panelsrv.worker import importer
from tests.cli.test_admin_cli import ok_json, panelsrv
from tests.e2e.served import call
from tests.http.httpkit import free_port
from tests.kit.stack import panelsrv_argv, spawn
from tests.store.helpers import unique


async def test_run_serves_the_demo_and_stops_cleanly(own_database_url: str) -> None:
    database_url = own_database_url
    port = free_port()
    proc = spawn(
        panelsrv_argv(
            "run", "--database-url", database_url, "--port", str(port), "--set", "ops_port=0"
        ),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        key = ""
        for line in proc.stdout:
            if line.strip().startswith("demo key"):
                key = line.split()[-1]
                break
        assert key.startswith("psk_")
        # The printed curl lines use 127.0.0.1: run serves unknown hosts with the demo panel.
        r = await call(port, {"key": key, "action": "balance"}, host="127.0.0.1")
        assert (r.status, r.json()["currency"]) == (200, "USD")
        r = await call(
            port,
            {
                "key": key,
                "action": "add",
                "service": 1,
                "link": "https://instagram.com/example",
                "quantity": 100,
            },
            host="127.0.0.1",
        )
        assert r.status == 200, r.body
        order = r.json()["order"]
        r = await call(port, {"key": key, "action": "status", "order": order}, host="127.0.0.1")
        assert r.json()["status"] in ("Pending", "In progress")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


async def test_service_import_creates_updates_and_deactivates(database_url: str) -> None:
    async with Simulator(services=8) as sim:
        name = unique("upstream")

        # The simulator answers on this test's loop: the CLI runs in a thread meanwhile.
        def cli(*args: str) -> Any:
            return asyncio.to_thread(ok_json, database_url, *args)

        await cli("provider", "add", "--name", name, "--url", sim.url, "--key", sim.key)
        first = await cli("service", "import", "--provider", name, "--markup", "30")
        assert first == {"imported": 8, "updated": 0}
        again = await cli("service", "import", "--provider", name, "--markup", "50")
        assert again == {"imported": 0, "updated": 8}
        conn = await db.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT s.provider_service, s.rate, s.active FROM services s"
                " JOIN providers p ON p.id = s.provider_id WHERE p.name = $1",
                name,
            )
            upstream = {str(s["service"]): Decimal(s["rate"]) for s in sim.book.services}
            for row in rows:
                expected = upstream[row["provider_service"]] * Decimal("1.5")
                assert row["rate"] == money.parse(str(expected.quantize(Decimal("0.00001"))))
            # A service gone upstream is deactivated, not deleted.
            provider_id = await conn.fetchval("SELECT id FROM providers WHERE name = $1", name)
            remaining = [
                Service(
                    service=str(s["service"]),
                    name=s["name"],
                    rate=Decimal(s["rate"]),
                    min=s["min"],
                    max=s["max"],
                    type=s["type"],
                    category=s["category"],
                )
                for s in sim.book.services[1:]
            ]
            result = await importer.import_services(conn, provider_id, remaining, 0, None)
            assert (result.imported, result.updated, result.deactivated) == (0, 7, 1)
            assert not await conn.fetchval(
                "SELECT active FROM services WHERE provider_id = $1 AND provider_service = '1'",
                provider_id,
            )
        finally:
            await conn.close()
    bad = panelsrv(database_url, "service", "import", "--provider", "no-such", "--json")
    assert bad.returncode == 2 and bad.stdout == ""
