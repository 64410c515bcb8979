"""One signature, one meaning (issue 12, point 18), against a real `panelsrv serve`: the seeds'
signed string read three ways, a signed JSON null, the unambiguous `sign_version=2` form, and
the samples of docs/samples/ run as a client would run them (Python, Node, bash + curl +
openssl; PHP is not installed here, so its sample is checked by eye only).

The server's default panel is this module's, so a sample can be pointed at
`http://127.0.0.1:<port>/api/v2` as it is, without setting a Host header.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from panelsrv.api import sign
from panelsrv.store import admin, db
from tests.conftest import run_async
from tests.e2e.kit import assert_audit_clean, signed, sql, sql_value, wallet_and_orders
from tests.e2e.served import World, call, offered
from tests.kit.stack import Served, served

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
DOMAIN = f"sign{secrets.token_hex(4)}.test"
COMMENTS = "\n".join(f"c{i}" for i in range(100))


class Panel:
    def __init__(self, user_id: int, key: str, comments: int, default: int) -> None:
        self.user_id = user_id
        self.key = key
        self.comments = comments  # a Custom Comments service
        self.default = default  # a default service, 1..10000


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, default_panel=DOMAIN) as s:
        yield s


@pytest.fixture(scope="module")
def panel(server: Served, database_url: str) -> Panel:
    return run_async(_open_panel(server, database_url))  # type: ignore[no-any-return]


async def _open_panel(server: Served, database_url: str) -> Panel:
    conn = await db.connect(database_url)
    try:
        await admin.add_panel(conn, DOMAIN, "USD")
    finally:
        await conn.close()
    world = World(database_url)
    user_id, key = await world.user(DOMAIN, balance="1000.00")
    kinds = {}
    for kind in ("Custom Comments", "default"):
        kinds[kind] = await world.service(DOMAIN, type=kind, rate="1.00", min=1, max=10_000)
    await offered(server.port, DOMAIN, key, *kinds.values())
    return Panel(user_id, key, kinds["Custom Comments"], kinds["default"])


async def order_row(database_url: str, order: int) -> tuple[str, int]:
    rows = await sql(database_url, "SELECT link, quantity FROM orders WHERE id = $1", order)
    return rows[0]["link"], rows[0]["quantity"]


async def test_a_seed_signature_covers_one_of_its_three_readings(
    server: Served, panel: Panel, database_url: str
) -> None:
    common = {"key": panel.key, "action": "add", "service": str(panel.comments)}
    common["comments"] = COMMENTS
    two_fields = signed({**common, "link": "https://a", "quantity": "100"}, panel.key)
    signature = two_fields["sign"]
    # The same seed-form string, so the same signature, for a link that swallows the quantity
    # and for an unknown field name that swallows the link.
    one_link = {**common, "link": "https://a&quantity=100", "sign": signature}
    unknown_name = {**common, "link=https://a&quantity": "100", "sign": signature}
    assert sign.canonical(two_fields) == sign.canonical(one_link)  # type: ignore[arg-type]
    assert sign.canonical(two_fields) == sign.canonical(unknown_name)  # type: ignore[arg-type]

    before = await wallet_and_orders(database_url, panel.user_id)
    r = await call(server.port, one_link, host=DOMAIN)
    assert (r.status, r.json()["error"]) == (
        400,
        "link: holds '&quantity=', which the sign_version 1 string cannot tell from a field of"
        " its own: sign with sign_version=2",
    )
    r = await call(server.port, unknown_name, host=DOMAIN)
    assert (r.status, r.json()) == (
        400,
        {
            "error": "link=https://a&quantity: not a field of add; a field passed to the"
            " provider is named with 1 to 64 characters a-z, 0-9 or _"
        },
    )
    fields = {**common, "link": None, "quantity": 100}
    r = await call(server.port, signed(fields, panel.key), host=DOMAIN, encoding="json")
    assert (r.status, r.json()) == (
        400,
        {"error": "link: must be a string or a number in a signed request"},
    )
    assert await wallet_and_orders(database_url, panel.user_id) == before  # nothing changed

    # The two-field reading is served.
    r = await call(server.port, two_fields, host=DOMAIN)
    assert r.status == 200, r.body
    assert await order_row(database_url, r.json()["order"]) == ("https://a", 100)
    assert_audit_clean(database_url)


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_a_v2_signed_link_with_an_ampersand_is_served(
    server: Served, panel: Panel, database_url: str, encoding: str
) -> None:
    link = "https://a/?x=1&quantity=100&é=(ü)"
    fields: dict[str, Any] = {
        "key": panel.key,
        "action": "add",
        "service": panel.comments,
        "comments": COMMENTS,
        "link": link,
        "sign_version": 2,
    }
    fields["sign"] = sign.compute(panel.key, {k: str(v) for k, v in fields.items()}, 2)
    r = await call(server.port, fields, host=DOMAIN, encoding=encoding)
    assert r.status == 200, r.body
    assert await order_row(database_url, r.json()["order"]) == (link, 100)
    # The same fields and signature under the seeds' form do not verify.
    del fields["sign_version"]
    r = await call(server.port, fields, host=DOMAIN, encoding=encoding)
    assert r.status == 400 and r.json()["error"].startswith("link: holds '&quantity='"), r.body


SAMPLE_RUNNERS = {
    "sign_v2.py": [sys.executable],
    "sign_v2.js": ["node"],
    "sign_v2.sh": ["bash"],
}
SAMPLE_TOOLS = {"sign_v2.py": [], "sign_v2.js": ["node"], "sign_v2.sh": ["bash", "curl", "openssl"]}


@pytest.mark.parametrize("sample", sorted(SAMPLE_RUNNERS))
async def test_the_documented_samples_are_served(
    server: Served, panel: Panel, database_url: str, sample: str
) -> None:
    missing = [tool for tool in SAMPLE_TOOLS[sample] if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    link = f"https://example.com/p?a=(1)&b=it's!*~&quantity=5&é=ü&n={secrets.token_hex(3)}"
    env = {
        **os.environ,
        "PANEL_URL": f"http://127.0.0.1:{server.port}/api/v2",
        "PANEL_KEY": panel.key,
        "PANEL_SERVICE": str(panel.default),
        "PANEL_LINK": link,
        "PANEL_QUANTITY": "250",
    }
    done = subprocess.run(
        [*SAMPLE_RUNNERS[sample], str(SAMPLES / sample)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    order = json.loads(out)["order"]
    assert await order_row(database_url, order) == (link, 250)
    charge = await sql_value(database_url, "SELECT charge FROM orders WHERE id = $1", order)
    assert charge == 25_000  # 250 at 1.00 per 1000
    assert_audit_clean(database_url)
