"""Every admin command as a user runs it: a real `panelsrv` process against a real database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import asyncpg
import orjson
import pytest

from panelsrv import money
from panelsrv.store import admin, db, ledger
from tests.conftest import run_async
from tests.store.helpers import new_service, order_of, unique

ISO = re.compile(r"^\d{4}-\d\d-\d\dT")


def panelsrv(
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "panelsrv", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def ok_json(database_url: str, *args: str) -> Any:
    done = panelsrv(database_url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def table_counts(database_url: str) -> dict[str, int]:
    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            tables = [
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            ]
            return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        finally:
            await conn.close()

    return run_async(count())


@pytest.fixture(scope="module")
def world(database_url: str) -> dict[str, str]:
    domain = unique("cli") + ".test"
    email = unique("buyer") + "@example.test"
    ok_json(database_url, "panel", "add", "--domain", domain, "--currency", "EUR")
    ok_json(database_url, "user", "add", "--email", email, "--domain", domain, "--balance", "10.00")
    ok_json(database_url, "tier", "add", "--domain", domain, "--name", "gold", "--rate", "9",
            "--burst", "9")  # fmt: skip
    return {"domain": domain, "email": email}


def test_tiers_add_set_list_and_users_on_them(database_url: str) -> None:
    domain = unique("tiers") + ".test"
    ok_json(database_url, "panel", "add", "--domain", domain)
    basic = ok_json(database_url, "tier", "add", "--domain", domain, "--name", "basic",
                    "--rate", "5", "--burst", "10")  # fmt: skip
    assert basic == {
        "tier": basic["tier"], "panel": domain, "name": "basic", "rate": 5.0, "burst": 10,
        "orders": 30, "users": 0,
    }  # fmt: skip
    ok_json(database_url, "tier", "add", "--domain", domain, "--name", "pro", "--rate", "50",
            "--burst", "100", "--orders", "20")  # fmt: skip
    email = unique("t") + "@example.test"
    user = ok_json(database_url, "user", "add", "--email", email, "--domain", domain,
                   "--tier", "basic")  # fmt: skip
    assert user["tier"] == "basic"
    moved = ok_json(database_url, "user", "set-tier", "--email", email, "--tier", "pro")
    assert moved == {"user": user["user"], "email": email, "tier": "pro"}
    changed = ok_json(database_url, "tier", "set", "--domain", domain, "--name", "pro",
                      "--rate", "0.5", "--orders", "3")  # fmt: skip
    assert (changed["rate"], changed["burst"], changed["orders"], changed["users"]) == (
        0.5, 100, 3, 1,
    )  # fmt: skip
    listed = ok_json(database_url, "tier", "list", "--domain", domain)
    assert [(t["name"], t["users"]) for t in listed] == [("basic", 0), ("pro", 1)]
    text = panelsrv(database_url, "tier", "list", "--domain", domain)
    assert text.stdout.splitlines() == [
        f"basic on {domain}: 5 requests/s, burst 10, 30 orders/min (0 users)",
        f"pro on {domain}: 0.5 requests/s, burst 100, 3 orders/min (1 users)",
    ]
    back = ok_json(database_url, "user", "set-tier", "--email", email, "--default")
    assert back["tier"] is None
    assert ok_json(database_url, "tier", "list", "--domain", domain)[1]["users"] == 0


def test_documented_json_shapes(database_url: str, world: dict[str, str]) -> None:
    domain = unique("shape") + ".test"
    panel = ok_json(database_url, "panel", "add", "--domain", domain.upper())
    assert panel == {"panel": panel["panel"], "domain": domain, "currency": "USD"}
    email = unique("u") + "@example.test"
    user = ok_json(
        database_url,
        "user",
        "add",
        "--email",
        email,
        "--domain",
        domain,
        "--balance",
        "10",
        "--discount",
        "5",
    )
    assert user == {
        "user": user["user"], "email": email, "balance": "10.00", "currency": "USD", "tier": None,
    }  # fmt: skip
    key = ok_json(database_url, "key", "create", "--email", email)
    assert set(key) == {"key", "prefix", "user", "label", "allowed"} and key["user"] == user["user"]
    assert key["key"].startswith(key["prefix"]) and (key["label"], key["allowed"]) == ("", [])
    listed = ok_json(database_url, "key", "list", "--email", email)
    assert listed == [
        {"prefix": key["prefix"], "label": "", "allowed": [], "created": listed[0]["created"],
         "last_used": None, "revoked": None},
    ]  # fmt: skip
    assert ISO.match(listed[0]["created"])
    revoked = ok_json(database_url, "key", "revoke", "--prefix", key["prefix"])
    assert ISO.match(revoked["revoked"])
    listed = ok_json(database_url, "key", "list", "--email", email)
    assert listed[0]["revoked"] == revoked["revoked"]
    funds = ok_json(database_url, "funds", "add", "--email", email, "--amount", "2.5")
    assert funds == {"user": user["user"], "balance": "12.50", "entry": funds["entry"]}
    assert isinstance(funds["entry"], int)
    name = unique("prov")
    provider = ok_json(
        database_url,
        "provider",
        "add",
        "--name",
        name,
        "--url",
        "http://127.0.0.1:9100/api/v2",
        "--key",
        "k",
    )
    assert provider == {"provider": provider["provider"], "name": name}
    service = ok_json(
        database_url,
        "service",
        "add",
        "--name",
        "Followers",
        "--rate",
        "0.45",
        "--min",
        "100",
        "--max",
        "100000",
        "--provider",
        name,
        "--provider-service",
        "7",
        "--refill",
        "--domain",
        domain,
        "--local-id",
        "12",
    )
    assert service == {"service": service["service"], "local_id": 12}
    shared = ok_json(
        database_url,
        "service",
        "add",
        "--name",
        "Likes",
        "--rate",
        "1",
        "--min",
        "10",
        "--max",
        "1000",
    )
    assert shared == {"service": shared["service"], "local_id": None}
    rate = ok_json(
        database_url, "rate", "set", "--email", email, "--service", "12", "--rate", "0.40"
    )
    assert rate == {"user": user["user"], "service": service["service"], "rate": "0.40"}
    setting = ok_json(
        database_url, "panel", "set", "--domain", domain, "sec_order_max_per_min", "20"
    )
    assert setting["settings"] == {"sec_order_max_per_min": 20}
    report = ok_json(database_url, "audit")
    assert report == {
        "ok": True,
        "wallets": report["wallets"],
        "entries": report["entries"],
        "violations": [],
    }
    assert ok_json(database_url, "migrate")["migrations"][0] == "001_init"


def test_order_list_shows_what_a_provider_reported_as_error(
    database_url: str, world: dict[str, str]
) -> None:
    async def order_in_error() -> int:
        conn = await db.connect(database_url)
        try:
            user = await admin.user_by_email(conn, world["email"])
            service = await new_service(conn)
            order = order_of(user.panel_id, user.id, service, charge=money.parse("2.50"))
            order_id = (await ledger.place_order(conn, order)).order_id
            await conn.execute("UPDATE orders SET upstream_id = 'U-1' WHERE id = $1", order_id)
            await conn.execute("SELECT apply_order_status($1, 'Error', NULL, NULL)", order_id)
            assert order_id is not None
            return order_id
        finally:
            await conn.close()

    order_id = run_async(order_in_error())
    args = ("order", "list", "--status", "Error", "--domain", world["domain"])
    listed = ok_json(database_url, *args)
    assert listed == [
        {"order": order_id, "panel": world["domain"], "user": world["email"], "status": "Error",
         "charge": "2.50", "refunded": "2.50", "currency": "EUR", "provider": None,
         "upstream_id": "U-1", "error": None, "created": listed[0]["created"],
         "updated": listed[0]["updated"], "held": None},
    ]  # fmt: skip
    assert ISO.match(listed[0]["created"]) and ISO.match(listed[0]["updated"])
    text = panelsrv(database_url, *args)
    assert text.returncode == 0
    assert text.stdout.startswith(f"{order_id}  Error  2.50 EUR (refunded 2.50)  {world['email']}")
    assert ok_json(database_url, "order", "list", "--status", "Refunded", "--domain",
                   world["domain"]) == []  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("panel", "add", "--domain", "bad domain"),
        ("panel", "add", "--domain", "ok.test", "--currency", "EURO"),
        ("panel", "set", "--domain", "nope.test", "legacy_errors", "true"),
        ("panel", "set", "--domain", "{domain}", "legacy_errors", "maybe"),
        ("panel", "set", "--domain", "{domain}", "accept_get", "yes"),
        ("panel", "set", "--domain", "{domain}", "no_such_setting", "1"),
        ("panel", "set", "--domain", "{domain}", "sec_order_max_per_min", "-1"),
        ("user", "add", "--email", "{email}", "--domain", "{domain}"),
        ("user", "add", "--email", "not-an-email", "--domain", "{domain}"),
        ("user", "add", "--email", "x@y.test", "--domain", "{domain}", "--balance", "1.000001"),
        ("user", "add", "--email", "x@y.test", "--domain", "{domain}", "--balance", "-1"),
        ("user", "add", "--email", "x@y.test", "--domain", "{domain}", "--discount", "101"),
        ("user", "add", "--email", "x@y.test", "--domain", "{domain}", "--balance", "NaN"),
        ("user", "add", "--email", "x@y.test", "--domain", "{domain}", "--tier", "nope"),
        ("user", "set-tier", "--email", "{email}", "--tier", "nope"),
        ("user", "set-tier", "--email", "{email}"),
        ("user", "set-tier", "--email", "{email}", "--tier", "gold", "--default"),
        ("user", "set-tier", "--email", "nobody@example.test", "--default"),
        ("tier", "add", "--domain", "{domain}", "--name", "t", "--rate", "1"),
        ("tier", "add", "--domain", "{domain}", "--name", "t", "--rate", "x", "--burst", "1"),
        ("tier", "add", "--domain", "{domain}", "--name", "t", "--rate", "0", "--burst", "1"),
        ("tier", "add", "--domain", "{domain}", "--name", "t", "--rate", "1", "--burst", "0"),
        (
            "tier",
            "add",
            "--domain",
            "{domain}",
            "--name",
            "t",
            "--rate",
            "1",
            "--burst",
            "1",
            "--orders",
            "31",
        ),
        ("tier", "add", "--domain", "{domain}", "--name", "no way", "--rate", "1", "--burst", "1"),
        ("tier", "add", "--domain", "nope.test", "--name", "t", "--rate", "1", "--burst", "1"),
        ("tier", "add", "--domain", "{domain}", "--name", "gold", "--rate", "1", "--burst", "1"),
        ("tier", "set", "--domain", "{domain}", "--name", "gold"),
        ("tier", "set", "--domain", "{domain}", "--name", "gold", "--orders", "31"),
        ("tier", "set", "--domain", "{domain}", "--name", "nope", "--rate", "2"),
        ("tier", "list", "--domain", "nope.test"),
        ("key", "create", "--email", "nobody@example.test"),
        ("key", "revoke", "--prefix", "psk_nothing"),
        ("key", "create", "--email", "{email}", "--label", "x" * 65),
        ("key", "create", "--email", "{email}", "--allow", "10.0.0.1,10.0.0.256"),
        ("user", "invite", "--email", "nobody@example.test"),
        ("user", "invite", "--email", "{email}", "--base-url", "ftp://panel.example"),
        ("user", "invite", "--email", "{email}", "--base-url", "https://panel.example/?a=1"),
        ("user", "invite", "--email", "{email}", "--base-url", "https:///no-host"),
        ("user", "invite", "--email", "{email}", "--base-url", "https://panel.example:99999"),
        ("funds", "add", "--email", "{email}", "--amount", "-10.01"),
        ("funds", "add", "--email", "{email}", "--amount", "0"),
        ("funds", "add", "--email", "{email}", "--amount", "1e3"),
        ("provider", "add", "--name", "p", "--url", "ftp://x", "--key", "k"),
        ("service", "add", "--name", "s", "--rate", "1", "--min", "10", "--max", "5"),
        (
            "service",
            "add",
            "--name",
            "s",
            "--rate",
            "1",
            "--min",
            "1",
            "--max",
            "5",
            "--type",
            "Nonsense",
        ),
        (
            "service",
            "add",
            "--name",
            "s",
            "--rate",
            "1",
            "--min",
            "1",
            "--max",
            "5",
            "--local-id",
            "3",
        ),
        (
            "service",
            "add",
            "--name",
            "s",
            "--rate",
            "1",
            "--min",
            "1",
            "--max",
            "5",
            "--provider",
            "no-such-provider",
            "--provider-service",
            "1",
        ),
        ("rate", "set", "--email", "{email}", "--service", "999999", "--rate", "1"),
        ("order", "list", "--status", "Failed"),
        ("order", "list", "--limit", "0"),
        ("order", "list", "--provider", "no-such-provider"),
        ("user", "add"),
        ("no-such-command",),
        ("audit", "--set", "port=notanumber"),
        ("audit", "--set", "no_such_setting=1"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    database_url: str, world: dict[str, str], args: tuple[str, ...]
) -> None:
    before = table_counts(database_url)
    done = panelsrv(database_url, *(a.format(**world) for a in args), "--json")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("panelsrv")
    assert table_counts(database_url) == before


def test_mistyped_environment_setting_is_named(database_url: str) -> None:
    done = panelsrv(database_url, "audit", env={"PANELSRV_POOL_SIZE": "lots"})
    assert done.returncode == 2 and "PANELSRV_POOL_SIZE" in done.stderr
    done = panelsrv(database_url, "audit", env={"PANELSRV_DATABSE_URL": "x"})
    assert done.returncode == 2 and "PANELSRV_DATABSE_URL" in done.stderr


def test_audit_exits_1_on_a_violation(database_url: str, world: dict[str, str]) -> None:
    async def tamper(delta: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE wallets SET balance = balance + $1 WHERE user_id ="
                " (SELECT id FROM users WHERE email = $2)",
                delta,
                world["email"],
            )
        finally:
            await conn.close()

    run_async(tamper(5))
    try:
        done = panelsrv(database_url, "audit", "--json")
        assert done.returncode == 1
        assert orjson.loads(done.stdout)["ok"] is False
    finally:
        run_async(tamper(-5))
