"""A flood of distinct client addresses cannot grow the per-IP table past its cap, end to end.

The addresses arrive as X-Forwarded-For from 127.0.0.1 (a trusted proxy by default). The rate is
set so low that every address stays in debt for the whole test: without the cap, each would keep
its entry (tests/guard/test_guard_buckets.py has the same flood against the table alone).
"""

from __future__ import annotations

import asyncio

from tests.kit.stack import Served
from tests.kit.wire import connect, post
from tests.limits.limitkit import scrape

CAP = 65_536  # limit_max_keys, the default
ADDRESSES = 100_000
BATCH = 32  # pipelined requests per write (the server parses at most 64 ahead)
NOPE = {"action": "nope"}  # refused by the API (400) without a key lookup or a strike


def forwarded(n: int) -> bytes:
    return b"X-Forwarded-For: 10.%d.%d.%d\r\n" % (n >> 16, (n >> 8) & 255, n & 255)


async def send_batches(port: int, lane: int, lanes: int) -> None:
    client = await connect(port)
    try:
        for start in range(lane * BATCH, ADDRESSES, lanes * BATCH):
            batch = range(start, min(start + BATCH, ADDRESSES))
            await client.send(b"".join(post(NOPE, forwarded(n), host="m.test") for n in batch))
            for _ in batch:
                response = await client.final(10.0)
                assert response is not None and response.status == 400
    finally:
        await client.close()


async def test_100k_addresses_keep_the_ip_table_at_its_cap(database_url: str) -> None:
    settings = {"ip_rate": "0.01", "ip_burst": "1", "limit_max_keys": str(CAP)}
    with Served(database_url, workers=1, settings=settings) as server:
        await asyncio.gather(*(send_batches(server.port, lane, 4) for lane in range(4)))
        metrics = await scrape(server.ops_port)
        assert 0 < metrics["panelsrv_guard_ip_keys"] <= CAP
        # The cap forgives the addresses closest to a full bucket: the latest stay limited.
        client = await connect(server.port)
        try:
            await client.send(post(NOPE, forwarded(ADDRESSES - 1), host="m.test"))
            response = await client.final(10.0)
            assert response is not None and response.status == 429
        finally:
            await client.close()
