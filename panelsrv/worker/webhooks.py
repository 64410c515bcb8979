"""Webhook delivery: signed POSTs of recorded events, retried with backoff, at least once.

Imports aiohttp, netsafe, store.webhooks and `client.webhook` (the signature: one format, which
resellers' receivers check with `verify_webhook`). The body of an event is rebuilt identically
at every attempt from what was recorded (same `id`, so a receiver deduplicates on it); the
signature header is `X-Panel-Signature: t=<unix>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`
with the attempt's own time. Every connection goes through `SafeResolver`, which refuses hosts
that resolve to non-public addresses at connect time, not only when the URL was registered;
an IP-literal host (which aiohttp connects to without resolving) is checked before each POST.
Answers are never decompressed and at most ANSWER_BYTES of one are read: a receiver cannot
make the worker hold more than that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from panelsrv import netsafe
from panelsrv.client.webhook import SIGNATURE_HEADER, sign_webhook
from panelsrv.store import webhooks
from panelsrv.store.pool import Pool

log = logging.getLogger("panelsrv.webhooks")

USER_AGENT = "panelsrv-webhooks/1"
# A delivery's lease outlives its POST by this much (recording the outcome included).
LEASE_MARGIN = 60.0
ANSWER_BYTES = 4096


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


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Delivery policy (config: webhook_*). `timeout`: one POST, connect to status line; a 2xx
    later than `slow` counts against the endpoint like a failure (it is delivered all the
    same). `concurrency`: deliveries in flight in this worker; `per_endpoint` and `per_user`:
    in flight over every worker. `breaker_threshold` failures in a row open an endpoint's
    breaker for `breaker_cooldown` seconds, then one delivery at a time probes it."""

    timeout: float = 10.0
    slow: float = 5.0
    concurrency: int = 20
    per_endpoint: int = 4
    per_user: int = 8
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0


class Sender:
    """Keeps up to `concurrency` deliveries in flight, refilling each slot as it frees (a
    stalled receiver holds one slot, never a batch); what is claimed is the store's fair
    share (per endpoint, per user, breakers)."""

    def __init__(
        self,
        pool: Pool,
        settings: WebhookSettings,
        *,
        allow_http: bool,
        allow_private: bool,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._lease = settings.timeout + LEASE_MARGIN
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self._breaker = (settings.breaker_threshold, settings.breaker_cooldown)
        self._flying: set[asyncio.Task[None]] = set()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=SafeResolver(allow_private),
                limit=settings.concurrency,
                use_dns_cache=False,
            ),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self, grace: float = 0.0) -> None:
        """Let deliveries in flight finish for up to `grace` seconds, cut the rest (their
        leases expire and another worker retries them), close the connections."""
        if self._flying:
            _, cut = await asyncio.wait(self._flying, timeout=grace)
            for task in cut:
                task.cancel()
            await asyncio.gather(*cut, return_exceptions=True)
        await self._session.close()

    async def run_once(self) -> int:
        """Fill the free slots with due deliveries (with none free, first wait for one);
        returns how many deliveries ended or started."""
        ended = 0
        if len(self._flying) >= self._settings.concurrency:
            done, _ = await asyncio.wait(self._flying, return_when=asyncio.FIRST_COMPLETED)
            ended = len(done)
        s = self._settings
        free = s.concurrency - len(self._flying)
        if free <= 0:
            return ended
        due = await webhooks.claim(self._pool, free, self._lease, s.per_endpoint, s.per_user)
        for delivery in due:
            task = asyncio.create_task(self._deliver(delivery))
            self._flying.add(task)
            task.add_done_callback(self._flying.discard)
        return ended + len(due)

    async def _deliver(self, delivery: webhooks.Delivery) -> None:
        try:
            delivered, error = await self._post(delivery)
            if error is not None:
                log.info(
                    "webhook %s delivery %s attempt %s: %s",
                    delivery.webhook_id,
                    delivery.event_id,
                    delivery.attempt,
                    error,
                )
            change = await webhooks.finish(
                self._pool, delivery, delivered=delivered, error=error, breaker=self._breaker
            )
        except Exception:  # the lease expires and another attempt follows
            log.exception("webhook %s delivery %s failed", delivery.webhook_id, delivery.id)
            return
        s = self._settings
        if change == "opened":
            log.warning(
                "webhook %s: circuit open for %.0f s after %d failed or slow deliveries in a row",
                delivery.webhook_id,
                s.breaker_cooldown,
                s.breaker_threshold,
            )
        elif change == "disabled":
            log.warning(
                "webhook %s: disabled after failing for %d hours",
                delivery.webhook_id,
                webhooks.GIVE_UP_AFTER_HOURS,
            )
        elif change == "closed":
            log.info("webhook %s: answering again, circuit closed", delivery.webhook_id)

    async def _post(self, delivery: webhooks.Delivery) -> tuple[bool, str | None]:
        """(delivered, why the endpoint did not behave): (True, None) for a 2xx within `slow`."""
        try:
            host, _ = netsafe.check_url(delivery.url, self._allow_http)
            netsafe.check_literal(host, self._allow_private)  # the resolver never sees literals
        except netsafe.UnsafeUrl as exc:
            return False, f"url {exc}"
        body = event_body(delivery)
        headers: dict[str, Any] = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_webhook(delivery.secret, int(time.time()), body),
            "X-Panel-Event": delivery.type,
            "X-Panel-Delivery": delivery.event_id,
        }
        started = time.monotonic()
        try:
            async with self._session.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                took = time.monotonic() - started
                await _skim(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
        if not 200 <= resp.status < 300:
            return False, f"HTTP {resp.status}"
        if took > self._settings.slow:
            return True, f"slow: HTTP {resp.status} after {took:.1f} s"
        return True, None


async def _skim(resp: aiohttp.ClientResponse) -> None:
    """Read at most ANSWER_BYTES of an answer, undecompressed (only its status matters): a
    short one leaves the connection reusable; a longer one, or one that stalls or breaks after
    its status line, is dropped with its connection."""
    left = ANSWER_BYTES
    try:
        while left > 0 and not resp.content.at_eof():
            chunk = await resp.content.read(left)
            if not chunk:
                break
            left -= len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
