"""Webhook delivery: signed POSTs of recorded events, retried with backoff, at least once.

Imports aiohttp, netsafe and store.webhooks. The body of an event is rebuilt identically at
every attempt from what was recorded (same `id`, so a receiver deduplicates on it); the
signature header is `X-Panel-Signature: t=<unix>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`
with the attempt's own time. Every connection goes through `SafeResolver`, which refuses hosts
that resolve to non-public addresses at connect time, not only when the URL was registered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from panelsrv import netsafe
from panelsrv.store import webhooks
from panelsrv.store.pool import Pool

log = logging.getLogger("panelsrv.webhooks")

USER_AGENT = "panelsrv-webhooks/1"
BATCH = 100
LEASE_SECONDS = 60.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def event_body(delivery: webhooks.Delivery) -> bytes:
    return orjson.dumps(
        {
            "id": delivery.event_id,
            "type": delivery.type,
            "created": delivery.created,
            "data": delivery.data,
        }
    )


class SafeResolver(AbstractResolver):
    """aiohttp resolver that only ever hands out public addresses (unless allowed)."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await netsafe.resolve(host, port, self._allow_private)
        except netsafe.UnsafeUrl as exc:
            raise OSError(f"{host}: {exc}") from None
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class Sender:
    def __init__(
        self,
        pool: Pool,
        *,
        allow_http: bool,
        allow_private: bool,
        timeout: float = 10.0,
        concurrency: int = 20,
    ) -> None:
        self._pool = pool
        self._allow_http = allow_http
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=SafeResolver(allow_private), limit=concurrency, use_dns_cache=False
            ),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._session.close()

    async def run_once(self) -> int:
        """Deliver what is due; returns how many deliveries were attempted."""
        due = await webhooks.claim(self._pool, BATCH, LEASE_SECONDS)
        await asyncio.gather(*(self._deliver(d) for d in due))
        return len(due)

    async def _deliver(self, delivery: webhooks.Delivery) -> None:
        if not delivery.active:
            await webhooks.drop(self._pool, delivery.id)
            return
        async with self._limit:
            error = await self._post(delivery)
        if error is None:
            await webhooks.delivered(self._pool, delivery.id)
        else:
            log.info(
                "webhook %s delivery %s attempt %s failed: %s",
                delivery.webhook_id,
                delivery.event_id,
                delivery.attempt,
                error,
            )
            await webhooks.failed(self._pool, delivery, error)

    async def _post(self, delivery: webhooks.Delivery) -> str | None:
        try:
            netsafe.check_url(delivery.url, self._allow_http)
        except netsafe.UnsafeUrl as exc:
            return f"url {exc}"
        body = event_body(delivery)
        headers: dict[str, Any] = {
            "Content-Type": "application/json",
            "X-Panel-Signature": signature(delivery.secret, int(time.time()), body),
            "X-Panel-Event": delivery.type,
            "X-Panel-Delivery": delivery.event_id,
        }
        try:
            async with self._session.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
