"""`verify_webhook` on a real delivery: a webhook added with the client on a live `panelsrv
serve`, an order canceled (its status change is the event), the worker delivering it to a
loopback receiver; the signature it carries verifies, and no longer does for a changed body,
another secret or a stale time. Plus the header's edge cases, fed values."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from panelsrv.client import AsyncClient, sign_webhook, verify_webhook
from panelsrv.store import db
from panelsrv.worker.main import Worker, WorkerSettings
from tests.e2e.served import World, offered
from tests.kit.stack import served
from tests.kit.waiting import until
from tests.worker.flow import running


class Receiver:
    """A loopback endpoint that answers 204 and keeps each delivery's body and signature."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str]] = []

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
            signature = re.search(rb"(?i)\r\nx-panel-signature:\s*([^\r]*)", head)
            self.got.append((body, signature.group(1).decode() if signature else ""))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()


async def test_a_real_delivery_verifies_and_a_tampered_one_does_not(own_database_url: str):
    world = World(own_database_url)
    domain = await world.panel()
    _, key = await world.user(domain)
    service = await world.service(domain, cancel=True)
    settings = {"webhook_allow_http": "true", "webhook_allow_private": "true"}
    with served(own_database_url, **settings) as server:
        await offered(server.port, domain, key, service)
        url = f"http://127.0.0.1:{server.port}/api/v2"
        async with Receiver() as receiver, AsyncClient(url, key, headers={"Host": domain}) as api:
            hook = await api.webhook_add(receiver.url, ["order.status"])
            order = await api.add(service, "https://example.com/p", 100)
            assert await api.cancel(order) is True  # not sent upstream: canceled at once
            pool = await db.create_pool(own_database_url, 4)
            worker = Worker(
                pool, WorkerSettings(idle=0.05, webhook_allow_http=True, webhook_allow_private=True)
            )
            task = await running(worker)
            try:
                await until(lambda: bool(receiver.got), 10, what="the delivery arrived")
            finally:
                worker.stop()
                await task
                await pool.close()
    body, signature = receiver.got[0]
    event = orjson.loads(body)
    assert (event["type"], event["data"]["order"], event["data"]["status"]) == (
        "order.status", int(order), "Canceled"
    )  # fmt: skip
    assert verify_webhook(hook.secret, body, signature)
    tampered = body.replace(b'"Canceled"', b'"Completed"')
    assert tampered != body and not verify_webhook(hook.secret, tampered, signature)
    assert not verify_webhook(hook.secret + "x", body, signature)
    sent_at = int(signature.split(",")[0].removeprefix("t="))
    assert not verify_webhook(hook.secret, body, signature, now=sent_at + 301)
    assert verify_webhook(hook.secret, body, signature, tolerance=None, now=sent_at + 10**6)


@pytest.mark.parametrize(
    "header",
    ["", "v1=00", "t=1700000000", "t=abc,v1=00", "t=1700000000,v1=é", "garbage", "t=-5,v1=0"],
)
def test_a_malformed_signature_header_is_refused_not_raised(header: str):
    assert not verify_webhook("whsec_x", b"{}", header, tolerance=None)


def test_any_one_of_several_v1_signatures_may_match():
    good = sign_webhook("whsec_new", 1_700_000_000, b"{}")
    header = f"t=1700000000,v1={'0' * 64},{good.split(',')[1]}"
    assert verify_webhook("whsec_new", b"{}", header, now=1_700_000_100)
    assert not verify_webhook("whsec_old", b"{}", header, now=1_700_000_100)
